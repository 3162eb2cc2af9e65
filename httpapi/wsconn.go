package httpapi

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// Buffer sizes of a hijacked WebSocket connection. net/http hands a
// hijacker 4 KiB read and write buffers; an idle session needs neither.
// Frames larger than the read buffer are read straight into their
// destination. coder/websocket writes only control frames (ping, pong,
// close: at most 2+125 bytes) through its writer, so each reaches
// corkedConn.Write whole; the session writes its data frames itself
// (corkedConn.text).
const (
	wsReadBuffer  = 128
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
	u.conn.br = bufio.NewReaderSize(u.conn, wsReadBuffer)
	if tc, ok := conn.(*net.TCPConn); ok { // not TLS: its records may hold bytes the socket no longer has
		if rc, err := tc.SyscallConn(); err == nil {
			u.conn.raw, u.conn.ready = rc, peekReady(&u.conn.peek)
		}
	}
	if n := brw.Reader.Buffered(); n > 0 {
		// Bytes the client sent right after its upgrade request, already
		// in net/http's buffer. They must come first from the connection
		// itself: coder/websocket re-points the reader it is given at the
		// connection.
		b, _ := brw.Reader.Peek(n)
		u.conn.pending = bytes.Clone(b)
	}
	return u.conn, bufio.NewReadWriter(u.conn.br, bufio.NewWriterSize(u.conn, wsWriteBuffer)), nil
}

// corkBuffers recycles the buffers of corked writes between sessions.
var corkBuffers = sync.Pool{New: func() any { b := make([]byte, 0, corkFlushAt); return &b }}

// errCloseSent: no data frame may follow a close frame.
var errCloseSent = errors.New("websocket close frame already sent")

// opClose is the first byte of a final close frame.
const opClose = 0x88

// corkedConn is a session's connection. Its writer gathers the frames of a
// batch into one buffer and sends them with one write (cork, text…,
// uncork): a client with many messages queued costs one syscall per batch
// instead of one per frame. Data frames are framed here, with no per-frame
// locking beyond one mutex; coder/websocket's own writes (control frames)
// join the batch when one is open, and go straight out otherwise.
type corkedConn struct {
	net.Conn
	pending []byte        // read before the connection; reader goroutine only
	br      *bufio.Reader // coder/websocket's reader of the connection
	// raw and ready let the reader wait for the client's next bytes
	// without reading them (awaitData); nil where that cannot be done.
	raw   syscall.RawConn
	ready func(fd uintptr) bool
	peek  [1]byte
	// rmu orders awaitData's look at the read buffer (and pending) with
	// the reading a close handshake does on its caller's goroutine
	// (session.closeWS holds it throughout).
	rmu sync.Mutex

	mu        sync.Mutex
	corked    bool
	closeSent bool
	buf       *[]byte
	timeout   time.Duration // bound on each write to the network; set before use
	deadline  time.Time     // the write deadline set on the connection
}

// freshDeadlineLocked gives the next write at least half of timeout,
// resetting the connection's deadline only when the one set is running
// out (a reset costs more than a clock read).
func (c *corkedConn) freshDeadlineLocked() {
	if c.timeout <= 0 {
		return
	}
	now := time.Now()
	if c.deadline.Sub(now) < c.timeout/2 {
		c.deadline = now.Add(c.timeout)
		_ = c.Conn.SetWriteDeadline(c.deadline)
	}
}

// awaitData returns once the client has sent something, or the
// connection has ended or failed (the next read says which), waiting in
// as shallow a call as there can be: an idle session's reader spends its
// life here, and a goroutine parked deep inside coder/websocket's reader
// keeps a 4 KiB stack where one parked here keeps 2. It reads nothing,
// so the bytes stay for coder/websocket, which may also read them itself
// (a close handshake); the connection's read lock keeps the two reads
// apart, and rmu the look at the buffer from the handshake's reading.
// Reader goroutine only.
func (c *corkedConn) awaitData() {
	c.rmu.Lock()
	idle := c.ready != nil && len(c.pending) == 0 && c.br.Buffered() == 0
	c.rmu.Unlock()
	if idle {
		_ = c.raw.Read(c.ready)
	}
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

// Write takes coder/websocket's frames: whole control frames (see
// wsWriteBuffer), so a close frame is recognised by its first byte.
func (c *corkedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(p) > 0 && p[0] == opClose {
		c.closeSent = true
	}
	if !c.corked {
		c.freshDeadlineLocked()
		return c.Conn.Write(p)
	}
	*c.buf = append(*c.buf, p...)
	return len(p), c.flushIfFullLocked()
}

// text appends one text frame whose payload is the concatenation of parts
// to the open batch.
func (c *corkedConn) text(parts ...[]byte) error {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeSent {
		return errCloseSent
	}
	b := appendFrameHeader(*c.buf, n)
	if n >= corkFlushAt { // a large frame goes out without copying its payload
		bufs := net.Buffers{b}
		for _, p := range parts {
			bufs = append(bufs, p)
		}
		*c.buf = b[:0]
		c.freshDeadlineLocked()
		_, err := bufs.WriteTo(c.Conn)
		return err
	}
	for _, p := range parts {
		b = append(b, p...)
	}
	*c.buf = b
	return c.flushIfFullLocked()
}

// appendFrameHeader appends the header of a final, unmasked text frame
// with an n-byte payload (RFC 6455 section 5.2).
func appendFrameHeader(b []byte, n int) []byte {
	switch {
	case n <= 125:
		return append(b, 0x81, byte(n))
	case n <= 0xffff:
		return append(b, 0x81, 126, byte(n>>8), byte(n))
	default:
		return append(b, 0x81, 127, byte(n>>56), byte(n>>48), byte(n>>40), byte(n>>32), byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
}

// cork opens a batch; uncork sends what is left. Every write to the
// network, batched or not, must finish within the connection's timeout.
func (c *corkedConn) cork() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = true
	c.buf = corkBuffers.Get().(*[]byte)
}

func (c *corkedConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.flushLocked()
	c.corked = false
	if cap(*c.buf) <= 4*corkFlushAt { // a buffer grown by a large frame is not kept
		*c.buf = (*c.buf)[:0]
		corkBuffers.Put(c.buf)
	}
	c.buf = nil
	return err
}

func (c *corkedConn) flushIfFullLocked() error {
	if len(*c.buf) < corkFlushAt {
		return nil
	}
	return c.flushLocked()
}

func (c *corkedConn) flushLocked() error {
	if len(*c.buf) == 0 {
		return nil
	}
	c.freshDeadlineLocked()
	_, err := c.Conn.Write(*c.buf)
	*c.buf = (*c.buf)[:0]
	return err
}
