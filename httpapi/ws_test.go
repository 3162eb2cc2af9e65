package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
)

// wsClient is a test WebSocket client speaking the session protocol.
type wsClient struct {
	t      testing.TB
	c      *websocket.Conn
	frames chan map[string]any
	done   chan error // the read loop's end: a websocket.CloseError or EOF
}

// dialWS opens a session; with a token, it is sent in the Authorization
// header.
func (g *gateway) dialWS(token string) *wsClient {
	g.t.Helper()
	c, resp, err := g.tryDialWS(token)
	if err != nil {
		g.t.Fatalf("dial: %v (%v)", err, resp)
	}
	return c
}

func (g *gateway) tryDialWS(token string, hdr ...string) (*wsClient, *http.Response, error) {
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		h.Set(hdr[i], hdr[i+1])
	}
	c, resp, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(g.URL, "http")+"/v1/ws",
		&websocket.DialOptions{HTTPHeader: h, HTTPClient: g.client})
	if err != nil {
		return nil, resp, err
	}
	c.SetReadLimit(8 << 20)
	w := &wsClient{t: g.t, c: c, frames: make(chan map[string]any, 4096), done: make(chan error, 1)}
	go w.readLoop()
	g.t.Cleanup(func() { c.CloseNow() })
	return w, resp, nil
}

// readLoop reads frames until the connection ends. A test's own reads
// use the channel, never a read context (which would close the socket).
func (w *wsClient) readLoop() {
	for {
		_, data, err := w.c.Read(context.Background())
		if err != nil {
			w.done <- err
			close(w.frames)
			return
		}
		var f map[string]any
		if err := json.Unmarshal(data, &f); err != nil {
			w.t.Errorf("frame is not JSON: %q", data)
			continue
		}
		w.frames <- f
	}
}

func (w *wsClient) send(v any) {
	w.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		w.t.Fatal(err)
	}
	w.sendRaw(string(b))
}

func (w *wsClient) sendRaw(s string) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.c.Write(ctx, websocket.MessageText, []byte(s)); err != nil {
		w.t.Fatalf("write: %v", err)
	}
}

// next returns the next frame with the given op, or one of more ops
// (skipping status frames).
func (w *wsClient) next(op string, more ...string) map[string]any {
	w.t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case f, ok := <-w.frames:
			if !ok {
				w.t.Fatalf("connection closed waiting for %q: %v", op, <-w.done)
			}
			if got, _ := f["op"].(string); got == op || slices.Contains(more, got) {
				return f
			}
			if f["op"] != "status" {
				w.t.Fatalf("got %v, want op %q", f, op)
			}
		case <-timeout:
			w.t.Fatalf("no %q frame within 5s", op)
		}
	}
}

// closed waits for the session to end and returns its close code.
func (w *wsClient) closed() websocket.StatusCode {
	w.t.Helper()
	for {
		select {
		case _, ok := <-w.frames:
			if !ok {
				return websocket.CloseStatus(<-w.done)
			}
		case <-time.After(10 * time.Second):
			w.t.Fatal("session not closed within 10s")
		}
	}
}

func TestWSHeaderAuthAndEveryOp(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	w := g.dialWS(adminToken)
	connected := w.next("connected")
	if connected["max_payload"].(float64) != 1<<20 {
		t.Fatalf("connected = %v", connected)
	}
	nc := g.native(adminToken)
	nc.Subscribe("svc.echo", func(m *nats.Msg) {
		r := nats.NewMsg(m.Reply)
		r.Data = append([]byte("re:"), m.Data...)
		r.Header.Set("Who", "native")
		m.RespondMsg(r)
	})
	natsSub, _ := nc.SubscribeSync("from.ws")
	nc.Flush()

	w.send(map[string]any{"op": "sub", "sid": "s1", "subject": "orders.>", "id": "i1"})
	if ok := w.next("ok"); ok["sid"] != "s1" || ok["id"] != "i1" {
		t.Fatalf("ok = %v", ok)
	}
	m := nats.NewMsg("orders.eu.1")
	m.Data, m.Reply = []byte("hi"), "back"
	m.Header.Set("Trace", "x")
	nc.PublishMsg(m)
	nc.Publish("orders.bin", []byte{0xff})
	nc.Flush()
	msg := w.next("msg")
	if msg["sid"] != "s1" || msg["subject"] != "orders.eu.1" || msg["data"] != "hi" || msg["reply"] != "back" ||
		fmt.Sprint(msg["headers"]) != "map[Trace:[x]]" {
		t.Fatalf("msg = %v", msg)
	}
	if msg := w.next("msg"); msg["data_base64"] != "/w==" || msg["data"] != nil {
		t.Fatalf("binary msg = %v", msg)
	}

	w.send(map[string]any{"op": "pub", "subject": "from.ws", "data": "plain"})
	w.send(map[string]any{"op": "pub", "subject": "from.ws", "data_base64": "AAEC", "headers": map[string]any{"A": "1", "B": []string{"2", "3"}}, "id": "p1"})
	if ok := w.next("ok"); ok["id"] != "p1" {
		t.Fatalf("pub ok = %v", ok)
	}
	got1, _ := natsSub.NextMsg(time.Second)
	got2, _ := natsSub.NextMsg(time.Second)
	if string(got1.Data) != "plain" || string(got2.Data) != "\x00\x01\x02" || got2.Header.Get("A") != "1" || fmt.Sprint(got2.Header.Values("B")) != "[2 3]" {
		t.Fatalf("native got %q then %q %v", got1.Data, got2.Data, got2.Header)
	}

	w.send(map[string]any{"op": "req", "id": "r1", "subject": "svc.echo", "data": "q", "timeout_ms": 2000})
	if rep := w.next("reply"); rep["id"] != "r1" || rep["data"] != "re:q" || fmt.Sprint(rep["headers"]) != "map[Who:[native]]" {
		t.Fatalf("reply = %v", rep)
	}
	w.send(map[string]any{"op": "req", "id": "r2", "subject": "svc.none"})
	if e := w.next("error"); e["id"] != "r2" || e["status"].(float64) != 503 {
		t.Fatalf("no responders = %v", e)
	}
	w.send(map[string]any{"op": "ping"})
	w.next("pong")

	w.send(map[string]any{"op": "unsub", "sid": "s1"})
	if ok := w.next("ok"); ok["sid"] != "s1" {
		t.Fatalf("unsub ok = %v", ok)
	}
	nc.Publish("orders.eu.2", []byte("after unsub"))
	nc.Flush()
	w.send(map[string]any{"op": "ping"})
	w.next("pong") // no msg before the pong: unsubscribed
}

func TestWSConnectFrameAuth(t *testing.T) {
	t.Parallel()
	g := startGateway(t, func(o *gatewayOptions) { o.cfg.WS.ConnectTimeout = 300 * time.Millisecond; o.cfg.AuthFailureLimit = -1 })
	t.Run("good", func(t *testing.T) {
		w := g.dialWS("")
		w.send(map[string]any{"op": "connect", "token": adminToken})
		w.next("connected")
		w.send(map[string]any{"op": "ping"})
		w.next("pong")
	})
	t.Run("connect again", func(t *testing.T) {
		w := g.dialWS("")
		w.send(map[string]any{"op": "connect", "token": adminToken})
		w.next("connected")
		w.send(map[string]any{"op": "connect", "token": "wrong", "id": "bad"})
		if f := w.next("error"); f["status"] != float64(401) || f["id"] != "bad" {
			t.Fatalf("connect with a wrong token on an open session: %v, want error 401", f)
		}
		for _, tok := range []string{adminToken, ordersToken} { // the same token, then another
			w.send(map[string]any{"op": "connect", "token": tok})
			w.next("connected")
		}
		w.send(map[string]any{"op": "pub", "subject": "billing.x", "id": "p"})
		if f := w.next("error"); f["status"] != float64(403) {
			t.Fatalf("a publish after moving to the orders token: %v, want its 403", f)
		}
	})
	for name, tc := range map[string]struct {
		first string
		code  websocket.StatusCode
	}{
		"wrong token":       {`{"op":"connect","token":"wrong"}`, 4401},
		"empty token":       {`{"op":"connect","token":""}`, 4401},
		"op before connect": {`{"op":"sub","sid":"a","subject":"x"}`, 4401},
		"not json":          {`hello`, 4400},
		"no op":             {`{"token":"x"}`, 4400},
		"nothing (timeout)": {"", 4408},
		"oversized connect": {`{"op":"connect","token":"` + strings.Repeat("a", 20000) + `"}`, websocket.StatusMessageTooBig},
	} {
		t.Run(name, func(t *testing.T) {
			w := g.dialWS("")
			switch tc.first {
			case "":
			default:
				w.sendRaw(tc.first)
			}
			if code := w.closed(); code != tc.code {
				t.Fatalf("close code %d, want %d", code, tc.code)
			}
		})
	}
	if _, resp, err := g.tryDialWS("wrong"); err == nil || resp.StatusCode != 401 {
		t.Fatalf("header with wrong token: %v %v", err, resp)
	}
}

func TestWSOperationErrorsKeepSessionOpen(t *testing.T) {
	t.Parallel()
	g := startGateway(t, func(o *gatewayOptions) { o.cfg.WS.MaxSubscriptions = 2 })
	w := g.dialWS(adminToken)
	w.next("connected")
	for _, tc := range []struct {
		frame  map[string]any
		status float64
	}{
		{map[string]any{"op": "sub", "subject": "x"}, 400},                // no sid
		{map[string]any{"op": "sub", "sid": "a", "subject": "a..b"}, 400}, // bad subject
		{map[string]any{"op": "sub", "sid": "a", "subject": "x", "queue": "a b"}, 400},
		{map[string]any{"op": "unsub", "sid": "nope"}, 400},
		{map[string]any{"op": "pub", "subject": "x.*", "id": "p"}, 400},
		{map[string]any{"op": "pub", "subject": "x", "data": "a", "data_base64": "YQ==", "id": "p"}, 400},
		{map[string]any{"op": "pub", "subject": "x", "data_base64": "!!", "id": "p"}, 400},
		{map[string]any{"op": "pub", "subject": "x", "headers": map[string]any{"Bad Name": "v"}, "id": "p"}, 400},
		{map[string]any{"op": "pub", "subject": "x", "headers": map[string]any{"A": "v\r\nInjected: 1"}, "id": "p"}, 400},
		{map[string]any{"op": "pub", "subject": "x", "headers": map[string]any{"A": 5}, "id": "p"}, 400},
		{map[string]any{"op": "pub", "subject": "x", "data": strings.Repeat("x", 1<<20+1), "id": "p"}, 413},
		{map[string]any{"op": "req", "subject": "x"}, 400}, // no id
		{map[string]any{"op": "req", "id": "r", "subject": "x", "timeout_ms": 0}, 400},
		{map[string]any{"op": "req", "id": "r", "subject": "x", "timeout_ms": 3600000}, 400},
	} {
		w.send(tc.frame)
		e := w.next("error")
		if e["status"].(float64) != tc.status || e["message"] == "" {
			t.Fatalf("%v → %v, want status %v", tc.frame, e, tc.status)
		}
	}
	w.send(map[string]any{"op": "sub", "sid": "a", "subject": "x"})
	w.next("ok")
	w.send(map[string]any{"op": "sub", "sid": "a", "subject": "y"})
	if e := w.next("error"); e["status"].(float64) != 400 {
		t.Fatalf("duplicate sid: %v", e)
	}
	w.send(map[string]any{"op": "sub", "sid": "b", "subject": "y"})
	w.next("ok")
	w.send(map[string]any{"op": "sub", "sid": "c", "subject": "z"})
	if e := w.next("error"); e["status"].(float64) != 429 {
		t.Fatalf("over the subscription bound: %v", e)
	}
	w.send(map[string]any{"op": "ping"})
	w.next("pong")
	// Protocol misuse closes.
	w.send(map[string]any{"op": "launch"})
	if code := w.closed(); code != 4400 {
		t.Fatalf("unknown op closed with %d", code)
	}
}

func TestWSBinaryAndOversizedFramesClose(t *testing.T) {
	t.Parallel()
	g := startGateway(t, func(o *gatewayOptions) { o.cfg.WS.MaxFrameBytes = 1024 })
	w := g.dialWS(adminToken)
	w.next("connected")
	ctx := context.Background()
	w.c.Write(ctx, websocket.MessageBinary, []byte(`{"op":"ping"}`))
	if code := w.closed(); code != 4400 {
		t.Fatalf("binary frame closed with %d, want 4400", code)
	}
	w = g.dialWS(adminToken)
	w.next("connected")
	w.sendRaw(`{"op":"pub","subject":"x","data":"` + strings.Repeat("a", 2000) + `"}`)
	if code := w.closed(); code != websocket.StatusMessageTooBig {
		t.Fatalf("oversized frame closed with %d, want 1009", code)
	}
}

// TestWSLongUnknownOpClosesWith4400: the quoted op in the close reason
// must not push it past a close frame's 123 bytes, or the client sees 1006
// (retry) instead of 4400 (final).
func TestWSLongUnknownOpClosesWith4400(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	for name, op := range map[string]string{
		"ascii":     strings.Repeat("x", 300),
		"multibyte": strings.Repeat("é", 150),
		"escaped":   strings.Repeat("\x01", 100),
	} {
		w := g.dialWS(adminToken)
		w.next("connected")
		w.send(map[string]any{"op": op})
		for range w.frames {
		}
		err := <-w.done
		var ce websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("%s op: session ended with %v, want a close frame with 4400", name, err)
		}
		if ce.Code != closeMalformed || len(ce.Reason) > 123 || !utf8.ValidString(ce.Reason) || !strings.HasPrefix(ce.Reason, "unknown op ") {
			t.Fatalf("%s op: closed %d %q (%d bytes), want 4400 with a valid reason of at most 123 bytes", name, ce.Code, ce.Reason, len(ce.Reason))
		}
	}
}

func TestWSSessionsShareTheTokensConnection(t *testing.T) {
	t.Parallel()
	g := startGateway(t, func(o *gatewayOptions) { o.cfg.WS.MaxSessionsPerToken = 3 })
	for range 3 {
		g.dialWS(adminToken).next("connected")
	}
	if got := g.pool.Stats().Conns; got != 1 {
		t.Fatalf("3 sessions of one token hold %d NATS connections, want 1", got)
	}
	if _, resp, err := g.tryDialWS(adminToken); err == nil || resp.StatusCode != 429 {
		t.Fatalf("4th session: %v %v, want 429", err, resp)
	}
	w := g.dialWS("")
	w.send(map[string]any{"op": "connect", "token": adminToken})
	if code := w.closed(); code != websocket.StatusTryAgainLater {
		t.Fatalf("4th session by connect frame closed %d, want 1013", code)
	}
}

func TestWSShutdownCloses1001(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	w := g.dialWS(adminToken)
	w.next("connected")
	g.api.Shutdown()
	if code := w.closed(); code != websocket.StatusGoingAway {
		t.Fatalf("close code %d, want 1001", code)
	}
	if _, resp, err := g.tryDialWS(adminToken); err == nil || resp.StatusCode != 503 {
		t.Fatalf("new session while shutting down: %v %v", err, resp)
	}
}

func TestWSSlowConsumerIsToldThenClosed(t *testing.T) {
	t.Parallel()
	g := startGateway(t, func(o *gatewayOptions) {
		o.cfg.QueueBytes = 64 << 10
		o.cfg.SlowConsumerGrace = 300 * time.Millisecond
	})
	// A raw client that subscribes, then stops reading.
	c, _, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(g.URL, "http")+"/v1/ws",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + adminToken}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	c.SetReadLimit(-1)
	ctx := context.Background()
	c.Write(ctx, websocket.MessageText, []byte(`{"op":"sub","sid":"s","subject":"flood"}`))
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), `"op":"ok"`) {
			break
		}
	}
	nc := g.native(adminToken)
	payload := make([]byte, 1024)
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			for range 100 {
				nc.Publish("flood", payload)
			}
			nc.Flush()
		}
	}()
	defer close(stop)
	time.Sleep(500 * time.Millisecond) // not reading: the queue fills
	var sawDrop bool
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			if code := websocket.CloseStatus(err); code != websocket.StatusPolicyViolation {
				t.Fatalf("closed with %v, want 1008", err)
			}
			break
		}
		if strings.Contains(string(b), `"status":429`) && strings.Contains(string(b), "slow consumer") {
			sawDrop = true
		}
	}
	if !sawDrop {
		t.Fatal("no 429 slow-consumer frame before the close")
	}
}

func TestWSStreamErrorsAreWSFrames(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	w := g.dialWS(ordersToken)
	w.next("connected")
	w.send(map[string]any{"op": "sub", "sid": "s", "subject": "billing.>"})
	if e := w.next("error"); e["status"].(float64) != 403 || e["sid"] != "s" {
		t.Fatalf("forbidden sub = %v", e)
	}
	w.send(map[string]any{"op": "pub", "subject": "billing.x", "id": "p"})
	if e := w.next("error"); e["status"].(float64) != 403 || e["id"] != "p" {
		t.Fatalf("forbidden pub = %v", e)
	}
	w.send(map[string]any{"op": "req", "subject": "billing.x", "id": "r"})
	if e := w.next("error"); e["status"].(float64) != 403 || e["id"] != "r" {
		t.Fatalf("forbidden req = %v", e)
	}
	w.send(map[string]any{"op": "pub", "subject": "orders.x", "id": "p2"})
	w.next("ok")
}

func TestWSPublishesKeepOrder(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	sub := g.nativeSub("seq")
	w := g.dialWS(adminToken)
	w.next("connected")
	const n = 500
	for i := range n {
		f := map[string]any{"op": "pub", "subject": "seq", "data": fmt.Sprint(i)}
		if i%3 == 0 {
			f["id"] = fmt.Sprint(i)
		}
		w.send(f)
	}
	for i := range n {
		m, err := sub.NextMsg(2 * time.Second)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if string(m.Data) != fmt.Sprint(i) {
			t.Fatalf("message %d arrived as %q: order lost", i, m.Data)
		}
	}
}

// TestWSFrameSentWithTheUpgradeIsNotLost sends the upgrade request and
// the first frame in one TCP write, so the frame lands in net/http's
// buffer before the hijack.
func TestWSFrameSentWithTheUpgradeIsNotLost(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	host := strings.TrimPrefix(g.URL, "http://")
	for range 20 {
		conn, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		payload := []byte(`{"op":"connect","token":"` + adminToken + `"}`)
		frame := []byte{0x81, 0x80 | 126, byte(len(payload) >> 8), byte(len(payload)), 1, 2, 3, 4}
		for i, b := range payload {
			frame = append(frame, b^[]byte{1, 2, 3, 4}[i%4])
		}
		req := "GET /v1/ws HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
		if _, err := conn.Write(append([]byte(req), frame...)); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
		hdr := make([]byte, 2)
		if _, err := io.ReadFull(br, hdr); err != nil {
			t.Fatal(err)
		}
		body := make([]byte, hdr[1]&0x7f)
		io.ReadFull(br, body)
		if hdr[0] != 0x81 || !strings.Contains(string(body), `"op":"connected"`) {
			t.Fatalf("first frame %x %q, want connected", hdr, body)
		}
		conn.Close()
	}
}

// TestWSFramesOfEveryLengthEncoding delivers payloads whose frames use
// each of the three WebSocket length encodings, and one large enough to
// bypass the batch buffer.
func TestWSFramesOfEveryLengthEncoding(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	w := g.dialWS(adminToken)
	w.next("connected")
	w.send(map[string]any{"op": "sub", "sid": "s", "subject": "sizes"})
	w.next("ok")
	nc := g.native(adminToken)
	sizes := []int{0, 50, 125, 126, 1000, 65535, 70000, 900000}
	for _, n := range sizes {
		nc.Publish("sizes", []byte(strings.Repeat("x", n)))
	}
	nc.Flush()
	for _, n := range sizes {
		f := w.next("msg")
		if got := len(f["data"].(string)); got != n {
			t.Fatalf("payload of %d bytes arrived with %d", n, got)
		}
	}
}

// TestWSDeadPeersAreClosed: a client that stops answering pings (it never
// reads, so it never sends a pong) is closed by the gateway.
func TestWSDeadPeersAreClosed(t *testing.T) {
	t.Parallel()
	g := startGateway(t, func(o *gatewayOptions) {
		o.cfg.KeepAlive = 50 * time.Millisecond
		o.cfg.WriteTimeout = 300 * time.Millisecond
	})
	live := g.dialWS(adminToken) // reads, so it answers pings
	live.next("connected")
	dead := g.rawSession(t) // reads its connected frame, then nothing
	defer dead.CloseNow()
	waitFor(t, "the silent session to be closed", func() bool {
		return metricValue(t, g, `natsgate_open_streams{transport="ws"}`) == 1
	})
	time.Sleep(200 * time.Millisecond) // several ping rounds
	live.send(map[string]any{"op": "ping"})
	live.next("pong")
	if got := metricValue(t, g, `natsgate_open_streams{transport="ws"}`); got != 1 {
		t.Fatalf("%v sessions open, want only the live one", got)
	}
}
