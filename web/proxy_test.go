package web_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// proxy is a TCP proxy between the browser and a gateway, for the faults a
// real network has: freeze stops forwarding and keeps every socket open,
// as a hung proxy or a dead link does (new connections are accepted and
// held too); cut closes every connection, mid-stream; kickAfterConnected
// ends each WebSocket session, right after the gateway's "connected"
// frame, with a close frame of the given code, as a gateway closing
// sessions at once would. Pages load through it too, so the WebSocket is
// same-origin.
type proxy struct {
	t      *testing.T
	URL    string
	ln     net.Listener
	target string
	done   chan struct{}
	wg     sync.WaitGroup

	mu       sync.Mutex
	thawed   chan struct{} // closed while forwarding
	kickCode uint16        // 0: forward sessions untouched
	isDown   bool          // new connections are closed at once, as by a host that is down
	conns    map[net.Conn]struct{}
	upgrades []time.Time // when each WebSocket upgrade answer went through
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, URL: "http://" + ln.Addr().String(), ln: ln, target: target,
		done: make(chan struct{}), thawed: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	close(p.thawed)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		close(p.done)
		_ = ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		if p.isDown { // checked with the registration, so down's cut misses nothing
			p.mu.Unlock()
			_ = c.Close()
			_ = up.Close()
			continue
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		kick := p.kickCode
		p.mu.Unlock()
		closeBoth := func() {
			_ = c.Close()
			_ = up.Close()
			p.mu.Lock()
			delete(p.conns, c)
			delete(p.conns, up)
			p.mu.Unlock()
		}
		select {
		case <-p.done: // shutting down: cut may have missed these
			closeBoth()
			return
		default:
		}
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			defer closeBoth()
			p.pipe(up, c)
		}()
		go func() {
			defer p.wg.Done()
			defer closeBoth()
			p.fromGateway(c, up, kick)
		}()
	}
}

// wait blocks while the proxy is frozen; false once it is shutting down.
func (p *proxy) wait() bool {
	p.mu.Lock()
	ch := p.thawed
	p.mu.Unlock()
	select {
	case <-ch:
		return true
	case <-p.done:
		return false
	}
}

// pipe copies src to dst, holding every chunk while frozen.
func (p *proxy) pipe(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.wait() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// fromGateway copies the gateway's side to the browser. It reads the HTTP
// response head; after a 101 it notes the upgrade and, with kick set,
// forwards frame by frame until the "connected" frame, then sends a close
// frame with that code and ends the connection.
func (p *proxy) fromGateway(browser, gateway net.Conn, kick uint16) {
	br := bufio.NewReader(gateway)
	var head []byte
	for {
		line, err := br.ReadSlice('\n')
		head = append(head, line...)
		if err != nil {
			if len(head) > 0 && p.wait() {
				_, _ = browser.Write(head)
			}
			return
		}
		if len(line) <= 2 { // the blank line ending the head
			break
		}
	}
	if !p.wait() {
		return
	}
	if _, err := browser.Write(head); err != nil {
		return
	}
	if !bytes.HasPrefix(head, []byte("HTTP/1.1 101 ")) {
		p.pipe(browser, br)
		return
	}
	p.mu.Lock()
	p.upgrades = append(p.upgrades, time.Now())
	p.mu.Unlock()
	if kick == 0 {
		p.pipe(browser, br)
		return
	}
	for {
		frame, payload, err := readFrame(br)
		if err != nil || !p.wait() {
			return
		}
		if _, err := browser.Write(frame); err != nil {
			return
		}
		if frame[0]&0x0f == 1 && bytes.Contains(payload, []byte(`"op":"connected"`)) {
			reason := "try again later (test proxy)"
			cf := []byte{0x88, byte(2 + len(reason))}
			cf = binary.BigEndian.AppendUint16(cf, kick)
			_, _ = browser.Write(append(cf, reason...))
			return
		}
	}
}

// readFrame reads one WebSocket frame as sent by a server (unmasked; a
// masked one is unmasked for the payload it returns).
func readFrame(r *bufio.Reader) (frame, payload []byte, err error) {
	hdr := make([]byte, 2, 14)
	if _, err = io.ReadFull(r, hdr); err != nil {
		return nil, nil, err
	}
	n := uint64(hdr[1] & 0x7f)
	switch n {
	case 126:
		ext := make([]byte, 2)
		if _, err = io.ReadFull(r, ext); err != nil {
			return nil, nil, err
		}
		hdr, n = append(hdr, ext...), uint64(binary.BigEndian.Uint16(ext))
	case 127:
		ext := make([]byte, 8)
		if _, err = io.ReadFull(r, ext); err != nil {
			return nil, nil, err
		}
		hdr, n = append(hdr, ext...), binary.BigEndian.Uint64(ext)
	}
	var mask []byte
	if hdr[1]&0x80 != 0 {
		mask = make([]byte, 4)
		if _, err = io.ReadFull(r, mask); err != nil {
			return nil, nil, err
		}
		hdr = append(hdr, mask...)
	}
	body := make([]byte, n)
	if _, err = io.ReadFull(r, body); err != nil {
		return nil, nil, err
	}
	frame = append(hdr, body...)
	payload = body
	if mask != nil {
		payload = make([]byte, n)
		for i := range body {
			payload[i] = body[i] ^ mask[i%4]
		}
	}
	return frame, payload, nil
}

// freeze stops all forwarding; sockets stay open.
func (p *proxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.thawed:
		p.thawed = make(chan struct{})
	default:
	}
}

// thaw forwards again, what was held first.
func (p *proxy) thaw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.thawed:
	default:
		close(p.thawed)
	}
}

// cut closes every connection through the proxy.
func (p *proxy) cut() {
	p.mu.Lock()
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// down cuts every connection and closes new ones at once, as a gateway
// that is down would, until up.
func (p *proxy) down() {
	p.mu.Lock()
	p.isDown = true
	p.mu.Unlock()
	p.cut()
}

// up forwards new connections again.
func (p *proxy) up() {
	p.mu.Lock()
	p.isDown = false
	p.mu.Unlock()
}

// refuse stops listening: new connections are refused, as by a gateway
// that is down; those open go on.
func (p *proxy) refuse() { _ = p.ln.Close() }

// kickAfterConnected makes new WebSocket sessions end with a close frame
// of this code right after the gateway's "connected"; 0 stops it.
func (p *proxy) kickAfterConnected(code uint16) {
	p.mu.Lock()
	p.kickCode = code
	p.mu.Unlock()
}

// upgradeTimes returns when each WebSocket upgrade went through so far.
func (p *proxy) upgradeTimes() []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]time.Time(nil), p.upgrades...)
}
