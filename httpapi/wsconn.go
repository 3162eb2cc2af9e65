package httpapi

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"sync"
	"time"
)

// Buffer sizes of a hijacked WebSocket connection. net/http hands a
// hijacker 4 KiB read and write buffers; an idle session needs neither, so
// each gets a small one: frames larger than the read buffer are read
// straight into their destination, and writes go through corkedConn.
const (
	wsReadBuffer  = 256
	wsWriteBuffer = 128
	corkFlushAt   = 64 << 10
)

// upgradeWriter is the ResponseWriter given to websocket.Accept: its
// Hijack returns the connection wrapped in a corkedConn, with small
// buffers, instead of net/http's.
type upgradeWriter struct {
	http.ResponseWriter
	conn *corkedConn
}

func (u *upgradeWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(u.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	_ = conn.SetReadDeadline(time.Time{}) // the http.Server's ReadTimeout was for the upgrade request
	u.conn = &corkedConn{Conn: conn}
	if n := brw.Reader.Buffered(); n > 0 {
		// Bytes the client sent right after its upgrade request, already
		// in net/http's buffer. They must come first from the connection
		// itself: coder/websocket re-points the reader it is given at the
		// connection.
		b, _ := brw.Reader.Peek(n)
		u.conn.pending = bytes.Clone(b)
	}
	return u.conn, bufio.NewReadWriter(bufio.NewReaderSize(u.conn, wsReadBuffer), bufio.NewWriterSize(u.conn, wsWriteBuffer)), nil
}

// corkBuffers recycles the buffers of corked writes between sessions.
var corkBuffers = sync.Pool{New: func() any { b := make([]byte, 0, corkFlushAt); return &b }}

// corkedConn gathers the frames a session's writer writes in one go into
// one buffer and sends them with one write: a client with many messages
// queued costs one syscall per batch instead of one per frame. Uncorked,
// writes go straight through.
type corkedConn struct {
	net.Conn
	pending []byte // read before the connection; reader goroutine only

	mu     sync.Mutex
	corked bool
	buf    *[]byte
}

func (c *corkedConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		if c.pending = c.pending[n:]; len(c.pending) == 0 {
			c.pending = nil
		}
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *corkedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		return c.Conn.Write(p)
	}
	if len(p) >= corkFlushAt { // a large frame goes out as it is
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		return c.Conn.Write(p)
	}
	*c.buf = append(*c.buf, p...)
	if len(*c.buf) >= corkFlushAt {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// cork starts gathering writes; uncork sends them, within timeout.
func (c *corkedConn) cork(timeout time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = true
	c.buf = corkBuffers.Get().(*[]byte)
	_ = c.Conn.SetWriteDeadline(time.Now().Add(timeout))
}

func (c *corkedConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.flushLocked()
	c.corked = false
	*c.buf = (*c.buf)[:0]
	corkBuffers.Put(c.buf)
	c.buf = nil
	_ = c.Conn.SetWriteDeadline(time.Time{})
	return err
}

func (c *corkedConn) flushLocked() error {
	if len(*c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(*c.buf)
	*c.buf = (*c.buf)[:0]
	return err
}
