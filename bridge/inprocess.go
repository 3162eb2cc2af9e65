package bridge

import (
	"net"
	"sync"
)

// inProcessBuffer bounds the bytes a client may have written to an
// in-process connection that the server has not read yet; past it, Write
// blocks, as a full TCP send buffer would.
const inProcessBuffer = 256 << 10

// inProcess provides nats.go with in-process connections to the embedded
// server whose client-side writes are buffered.
//
// The server's own InProcessConn is a net.Pipe, which has no buffer: when
// the server rejects a token it writes -ERR while nats.go is still writing
// CONNECT+PING, both sides block, and the connect fails only when the
// server's 10 s write deadline expires, with "read/write on closed pipe"
// instead of an authorization error. With the client's writes buffered the
// same rejection arrives in well under a millisecond as
// nats.ErrAuthorization (TestWrongTokenIsFast401OnEveryTransport).
//
// Reads pass through an errTap that records the permission violations the
// server reports into perms.
type inProcess struct {
	dial  func() (net.Conn, error)
	perms *permissionLog
}

func (p inProcess) InProcessConn() (net.Conn, error) {
	c, err := p.dial()
	if err != nil {
		return nil, err
	}
	b := &bufferedConn{Conn: c}
	b.cond = sync.NewCond(&b.mu)
	return &tapConn{Conn: b, tap: newErrTap(p.perms)}, nil
}

// bufferedConn is a net.Conn whose Write copies into a bounded buffer that a
// goroutine pumps into the underlying pipe. Reads go straight through.
//
// The pump runs only while there is something to write. nats.go does not
// close the connection of a reconnect the server refused (an expired
// token's, say) before it tries the next: an idle pump would wait on such
// an abandoned connection for ever.
type bufferedConn struct {
	net.Conn
	mu      sync.Mutex
	cond    *sync.Cond
	buf     []byte
	spare   []byte // the pump's last buffer, for the next writes
	pumping bool
	closed  bool
	err     error
}

func (b *bufferedConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.err == nil && !b.closed && len(b.buf) > 0 && len(b.buf)+len(p) > inProcessBuffer {
		b.cond.Wait()
	}
	switch {
	case b.err != nil:
		return 0, b.err
	case b.closed:
		return 0, net.ErrClosed
	}
	b.buf = append(b.buf, p...)
	if !b.pumping {
		b.pumping = true
		go b.pump()
	}
	return len(p), nil
}

// pump moves buffered bytes to the pipe until the buffer is empty, the
// connection is closed or the pipe fails; it is the connection's only
// writer to the pipe.
func (b *bufferedConn) pump() {
	var out []byte
	for {
		b.mu.Lock()
		if out != nil {
			b.spare = out[:0]
		}
		if len(b.buf) == 0 {
			b.pumping = false
			b.mu.Unlock()
			return
		}
		out, b.buf, b.spare = b.buf, b.spare, nil
		b.cond.Broadcast()
		b.mu.Unlock()
		if _, err := b.Conn.Write(out); err != nil {
			b.mu.Lock()
			b.err = err
			b.cond.Broadcast()
			b.mu.Unlock()
			return
		}
	}
}

// Close discards what is still buffered, as a reset TCP connection would,
// stops the pump and closes the pipe. nats.go flushes (and, when draining,
// waits for the server's PONG) before it closes, so nothing it promised is
// lost here.
func (b *bufferedConn) Close() error {
	b.mu.Lock()
	b.closed = true
	b.buf = nil
	b.cond.Broadcast()
	b.mu.Unlock()
	return b.Conn.Close()
}
