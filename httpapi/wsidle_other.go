//go:build !(linux || darwin || freebsd || netbsd || openbsd)

package httpapi

// peekReady: elsewhere an idle session waits inside coder/websocket's
// reader (corkedConn.awaitData does nothing without it).
func peekReady(*[1]byte) func(fd uintptr) bool { return nil }
