//go:build linux || darwin || freebsd || netbsd || openbsd

package httpapi

import "syscall"

// peekReady is awaitData's test of a socket, for syscall.RawConn.Read: it
// reports whether the socket has bytes to read, or an end or an error for
// the next read to find, by peeking at one byte without taking it (the
// socket is non-blocking). Returning false makes RawConn.Read wait until
// the socket is readable and ask again; RawConn.Read clears the readiness
// it last saw before its first call, so bytes that came earlier are found
// by the peek and bytes that come later wake it.
func peekReady(b *[1]byte) func(fd uintptr) bool {
	return func(fd uintptr) bool {
		for {
			_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK)
			if err != syscall.EINTR {
				return err != syscall.EAGAIN
			}
		}
	}
}
