package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func TestPublishAnswers204OnlyAfterServerHasMessage(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	sub := g.nativeSub("orders.eu")
	resp, body := g.do("POST", "/v1/publish/orders.eu?reply=orders.answers", adminToken, strings.NewReader("hello"),
		"NatsH-Trace-Id", "abc", "NatsH-Trace-Id", "def", "X-Other", "not a nats header")
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("status %d, body %s", resp.StatusCode, body)
	}
	// 204 means the server has it: the subscriber gets it without waiting.
	m, err := sub.NextMsg(2 * time.Second)
	if err != nil {
		t.Fatalf("native subscriber: %v", err)
	}
	if string(m.Data) != "hello" || m.Reply != "orders.answers" {
		t.Fatalf("got data %q reply %q", m.Data, m.Reply)
	}
	if got := m.Header.Values("Trace-Id"); fmt.Sprint(got) != "[abc def]" {
		t.Fatalf("NATS header Trace-Id = %v, want [abc def]", got)
	}
	if m.Header.Get("X-Other") != "" || len(m.Header) != 1 {
		t.Fatalf("unexpected NATS headers %v", m.Header)
	}
}

func TestPublishBinaryAndEmptyPayloads(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	sub := g.nativeSub("bin")
	payloads := [][]byte{{0, 0xff, 0xfe, 10, 13}, {}}
	for _, p := range payloads {
		if resp, body := g.do("POST", "/v1/publish/bin", adminToken, strings.NewReader(string(p))); resp.StatusCode != 204 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		m, err := sub.NextMsg(2 * time.Second)
		if err != nil || string(m.Data) != string(p) {
			t.Fatalf("got %q, %v; want %q", m.Data, err, p)
		}
	}
}

func TestAuthenticationErrors(t *testing.T) {
	t.Parallel()
	g := startGateway(t, func(o *gatewayOptions) { o.cfg.AuthFailureLimit = -1 })
	cases := []struct {
		name, path, auth string
		status           int
		wwwAuth, detail  string
	}{
		{"missing", "/v1/publish/x", "", 401, `Bearer realm="natsgate"`, "Authorization: Bearer"},
		{"basic", "/v1/publish/x", "Basic YWRtaW46cGFzcw==", 401, `Bearer realm="natsgate"`, "Bearer scheme"},
		// A bare token ("Authorization: <token>") is accepted since version 2
		// (TestBareAuthorizationIsAcceptedOnEveryRoute); another scheme is not.
		{"other scheme", "/v1/publish/x", "Token " + adminToken, 401, `Bearer realm="natsgate"`, "Bearer scheme"},
		{"empty bearer", "/v1/publish/x", "Bearer ", 401, `Bearer realm="natsgate"`, "Bearer"},
		{"wrong", "/v1/publish/x", "Bearer wrong", 401, `Bearer realm="natsgate", error="invalid_token"`, "rejected"},
		{"too long", "/v1/publish/x", "Bearer " + strings.Repeat("a", 64<<10), 401, `error="invalid_token"`, "longer"},
		{"wrong on request", "/v1/request/x", "Bearer wrong", 401, `error="invalid_token"`, "rejected"},
		{"token param", "/v1/publish/x?token=" + adminToken, "", 400, "", "Authorization: Bearer"},
		{"access_token param", "/v1/publish/x?access_token=a", "Bearer " + adminToken, 400, "", "connect"},
		{"auth_token param", "/v1/request/x?auth_token=a", "", 400, "", "URL"},
		{"bearer param", "/v1/subscribe/x?Bearer=a", "", 400, "", "URL"},
		{"upper case param", "/v1/publish/x?TOKEN=a", "", 400, "", "URL"},
		{"on ws", "/v1/ws?token=a", "", 400, "", "URL"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			method := "POST"
			if strings.HasPrefix(tc.path, "/v1/subscribe") || strings.HasPrefix(tc.path, "/v1/ws") {
				method = "GET"
			}
			var hdr []string
			if tc.auth != "" {
				hdr = []string{"Authorization", tc.auth}
			}
			resp, body := g.do(method, tc.path, "", strings.NewReader("x"), hdr...)
			wantProblem(t, resp, body, tc.status, tc.detail)
			if got := resp.Header.Get("WWW-Authenticate"); tc.wwwAuth != "" && !strings.Contains(got, tc.wwwAuth) {
				t.Fatalf("WWW-Authenticate %q, want %q", got, tc.wwwAuth)
			}
			if strings.Contains(string(body), adminToken) {
				t.Fatal("the token is echoed in the error")
			}
		})
	}
	if got := g.pool.Stats().Conns; got != 0 {
		t.Fatalf("bad credentials opened %d NATS connections", got)
	}
}

func TestTokenInURLUserinfoRefused(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	// A request-target in absolute form can carry userinfo.
	host := strings.TrimPrefix(g.URL, "http://")
	req, _ := http.NewRequest("POST", g.URL+"/v1/publish/x", nil)
	conn, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST http://user:%s@%s/v1/publish/x HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n\r\n", adminToken, host, host)
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	wantProblem(t, resp, body, 400, "URL")
}

func TestInvalidSubjectsAreRefusedBeforeNATS(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	nc := g.native(adminToken)
	sub, _ := nc.SubscribeSync(">")
	nc.Flush()
	long := strings.Repeat("a", 257)
	for _, subj := range []string{"a.*", "a.>", ">", "*", "a..b", ".a", "a.", "a%20b", "a%09b", "a%0Ab", long, "%FF", "a%00b"} {
		for _, path := range []string{"/v1/publish/", "/v1/request/"} {
			resp, body := g.do("POST", path+subj, adminToken, strings.NewReader("x"))
			wantProblem(t, resp, body, 400, "subject")
		}
	}
	for _, subj := range []string{"a.>.b", "a..b", "a%20b", long} {
		resp, body := g.do("GET", "/v1/subscribe/"+subj, adminToken, nil)
		wantProblem(t, resp, body, 400, "subject")
	}
	for _, q := range []string{"reply=a.*", "reply=a%20b", "reply=a..b"} {
		resp, body := g.do("POST", "/v1/publish/ok?"+q, adminToken, nil)
		wantProblem(t, resp, body, 400, "reply")
	}
	resp, body := g.do("GET", "/v1/subscribe/ok?queue=a%20b", adminToken, nil)
	wantProblem(t, resp, body, 400, "queue")
	resp, body = g.do("GET", "/v1/subscribe/ok?queue=", adminToken, nil)
	wantProblem(t, resp, body, 400, "queue")
	if m, err := sub.NextMsg(100 * time.Millisecond); err == nil {
		t.Fatalf("an invalid request reached NATS: %q", m.Subject)
	}
}

func TestHeadersAreChecked(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	resp, body := g.do("POST", "/v1/publish/x", adminToken, nil, "NatsH-", "v")
	wantProblem(t, resp, body, 400, "header")
	resp, body = g.do("POST", "/v1/publish/x", adminToken, nil, "NatsH-Big", strings.Repeat("v", 70<<10))
	wantProblem(t, resp, body, 400, "header")
}

func TestOversizedBodyIs413(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	nc := g.native(adminToken)
	max := nc.MaxPayload()
	big := strings.Repeat("x", int(max)+1)
	for _, path := range []string{"/v1/publish/big", "/v1/request/big"} {
		resp, body := g.do("POST", path, adminToken, strings.NewReader(big))
		wantProblem(t, resp, body, 413, "max_payload")
	}
	// Chunked, so the length is only known while reading.
	resp, body := g.do("POST", "/v1/publish/big", adminToken, io.MultiReader(strings.NewReader(big)))
	wantProblem(t, resp, body, 413, "max_payload")
	// Exactly max_payload is fine.
	resp, body = g.do("POST", "/v1/publish/big", adminToken, strings.NewReader(big[1:]))
	if resp.StatusCode != 204 {
		t.Fatalf("payload of exactly max_payload: %d %s", resp.StatusCode, body)
	}
}

func TestRequestReply(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	nc := g.native(adminToken)
	if _, err := nc.Subscribe("svc.echo", func(m *nats.Msg) {
		r := nats.NewMsg(m.Reply)
		r.Data = append([]byte("echo:"), m.Data...)
		r.Header.Set("Served-By", "native")
		r.Header.Set("Req-Trace", m.Header.Get("Trace"))
		_ = m.RespondMsg(r)
	}); err != nil {
		t.Fatal(err)
	}
	nc.Subscribe("svc.slow", func(*nats.Msg) {})
	nc.Flush()

	resp, body := g.do("POST", "/v1/request/svc.echo?timeout=2s", adminToken, strings.NewReader("ping"), "NatsH-Trace", "t1")
	if resp.StatusCode != 200 || string(body) != "echo:ping" {
		t.Fatalf("status %d body %q", resp.StatusCode, body)
	}
	if resp.Header.Get("NatsH-Served-By") != "native" || resp.Header.Get("NatsH-Req-Trace") != "t1" {
		t.Fatalf("reply headers %v", resp.Header)
	}
	for _, timeout := range []string{"", "?timeout=1500", "?timeout=500ms"} {
		if resp, _ := g.do("POST", "/v1/request/svc.echo"+timeout, adminToken, nil); resp.StatusCode != 200 {
			t.Fatalf("timeout %q: status %d", timeout, resp.StatusCode)
		}
	}
	resp, body = g.do("POST", "/v1/request/svc.nobody", adminToken, nil)
	wantProblem(t, resp, body, 503, "no responders")

	start := time.Now()
	resp, body = g.do("POST", "/v1/request/svc.slow?timeout=150ms", adminToken, nil)
	wantProblem(t, resp, body, 504, "timed out")
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("timed out after %v, before the 150ms asked for", d)
	}
	for _, bad := range []string{"abc", "-1s", "0", "0ms", "1h", "99999999999", "1.5"} {
		resp, body := g.do("POST", "/v1/request/svc.echo?timeout="+bad, adminToken, nil)
		wantProblem(t, resp, body, 400, "timeout")
	}
}

// sseStream reads a subscription stream line by line.
type sseStream struct {
	resp  *http.Response
	lines chan string
}

// stream opens a streamed subscription; hdr are more request headers,
// name then value.
func (g *gateway) stream(path, token, accept string, hdr ...string) *sseStream {
	g.t.Helper()
	return g.streamWith(g.client, path, token, accept, hdr...)
}

func (g *gateway) streamWith(client *http.Client, path, token, accept string, hdr ...string) *sseStream {
	g.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", g.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		cancel()
		g.t.Fatal(err)
	}
	s := &sseStream{resp: resp, lines: make(chan string, 1024)}
	go func() {
		defer close(s.lines)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 4<<20)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
	}()
	g.t.Cleanup(func() {
		cancel()
		resp.Body.Close()
	})
	return s
}

func (s *sseStream) close() { s.resp.Body.Close() }

// next returns the next line for which keep(line) is true.
func (s *sseStream) next(t testing.TB, keep func(string) bool) string {
	t.Helper()
	l, ok := s.nextOrEnd(t, keep)
	if !ok {
		t.Fatal("stream ended")
	}
	return l
}

// nextOrEnd returns the next line for which keep(line) is true, or false
// when the stream ends first.
func (s *sseStream) nextOrEnd(t testing.TB, keep func(string) bool) (string, bool) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok || keep(l) {
				return l, ok
			}
		case <-timeout:
			t.Fatal("no line within 5s")
		}
	}
}

func isData(l string) bool { return strings.HasPrefix(l, "data: ") }

func TestSubscribeStreamsSSE(t *testing.T) {
	t.Parallel()
	g := startGateway(t, func(o *gatewayOptions) { o.cfg.KeepAlive = 50 * time.Millisecond })
	before := g.serverSubs()
	s := g.stream("/v1/subscribe/orders.*", adminToken, "")
	if s.resp.StatusCode != 200 || s.resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d, Content-Type %q", s.resp.StatusCode, s.resp.Header.Get("Content-Type"))
	}
	nc := g.native(adminToken)
	m := nats.NewMsg("orders.eu")
	m.Data = []byte("hello")
	m.Reply = "reply.here"
	m.Header.Set("Trace", "1")
	nc.PublishMsg(m)
	nc.Publish("orders.bin", []byte{0xff, 0x00})
	nc.Publish("other.x", []byte("not for us"))
	nc.Flush()
	if got := s.next(t, isData); got != `data: {"subject":"orders.eu","reply":"reply.here","headers":{"Trace":["1"]},"data":"hello"}` {
		t.Fatalf("got %s", got)
	}
	if got := s.next(t, isData); got != `data: {"subject":"orders.bin","data_base64":"/wA="}` {
		t.Fatalf("got %s", got)
	}
	s.next(t, func(l string) bool { return l == ": keep-alive" })
	s.close()
	// The NATS subscription goes when the client does.
	waitFor(t, "the subscription to be removed", func() bool { return g.serverSubs() == before })
}

func TestSubscribeStreamsNDJSONWithQueueGroups(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	a := g.stream("/v1/subscribe/jobs?queue=workers", adminToken, "application/x-ndjson")
	b := g.stream("/v1/subscribe/jobs?queue=workers", adminToken, "application/x-ndjson")
	if ct := a.resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Fatalf("Content-Type %q", ct)
	}
	nc := g.native(adminToken)
	const n = 40
	for i := range n {
		nc.Publish("jobs", []byte(fmt.Sprint(i)))
	}
	nc.Flush()
	seen := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	counts := [2]int{}
	for i, s := range []*sseStream{a, b} {
		wg.Go(func() {
			for {
				select {
				case l := <-s.lines:
					if l == "" {
						continue
					}
					var m struct{ Subject, Data string }
					if err := json.Unmarshal([]byte(l), &m); err != nil {
						t.Errorf("line %q: %v", l, err)
						return
					}
					mu.Lock()
					if seen[m.Data] {
						t.Errorf("message %s delivered twice in a queue group", m.Data)
					}
					seen[m.Data] = true
					counts[i]++
					mu.Unlock()
				case <-time.After(300 * time.Millisecond):
					return
				}
			}
		})
	}
	wg.Wait()
	if len(seen) != n {
		t.Fatalf("queue group received %d distinct messages, want %d", len(seen), n)
	}
	t.Logf("queue members got %d and %d", counts[0], counts[1])
}

func TestStreamsPerTokenAreBoundedWith429(t *testing.T) {
	t.Parallel()
	g := startGateway(t, func(o *gatewayOptions) { o.cfg.MaxStreamsPerToken = 2 })
	subscribed := func(l string) bool { return l == ": subscribed" }
	sse := g.stream("/v1/subscribe/a", adminToken, "")
	sse.next(t, subscribed)
	nd := g.stream("/v1/subscribe/b", adminToken, "application/x-ndjson")
	if nd.resp.StatusCode != 200 {
		t.Fatalf("second stream: %d", nd.resp.StatusCode)
	}
	// SSE and NDJSON count together; a third is refused before NATS
	// gets a subscription.
	subs := g.serverSubs()
	for _, accept := range []string{"", "application/x-ndjson"} {
		s := g.stream("/v1/subscribe/c", adminToken, accept)
		if s.resp.StatusCode != 429 {
			t.Fatalf("third stream (Accept %q): %d, want 429", accept, s.resp.StatusCode)
		}
		var body []byte
		for l := range s.lines { // lines without their newlines
			body = append(append(body, l...), '\n')
		}
		wantProblem(t, s.resp, body, 429, "already has 2 open subscription streams")
	}
	if got := g.serverSubs(); got != subs {
		t.Fatalf("refused streams left %d server subscriptions, had %d", got, subs)
	}
	// Another token, and the same token's WebSocket sessions, are not
	// affected.
	other := g.stream("/v1/subscribe/orders.x", ordersToken, "")
	other.next(t, subscribed)
	g.dialWS(adminToken).next("connected")
	// A stream that ends frees its place.
	sse.close()
	waitFor(t, "a place after a stream ended", func() bool {
		s := g.stream("/v1/subscribe/d", adminToken, "")
		defer s.close()
		return s.resp.StatusCode == 200
	})
}

func TestStreamEndsOnShutdown(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	s := g.stream("/v1/subscribe/x", adminToken, "")
	s.next(t, func(l string) bool { return l == ": subscribed" })
	g.api.Shutdown()
	s.next(t, func(l string) bool { return strings.Contains(l, "shutting down") })
	for range s.lines {
	}
	resp, body := g.do("POST", "/v1/publish/x", adminToken, nil)
	wantProblem(t, resp, body, 503, "shutting down")
	resp, body = g.do("GET", "/readyz", "", nil)
	wantProblem(t, resp, body, 503, "shutting down")
}

func TestHealthAndReadiness(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	for _, p := range []string{"/healthz", "/readyz"} {
		if resp, body := g.do("GET", p, "", nil); resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", p, resp.StatusCode, body)
		}
	}
	resp, body := g.do("GET", "/openapi.yaml", "", nil)
	if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "openapi: 3.") {
		t.Fatalf("/openapi.yaml: %d", resp.StatusCode)
	}
	resp, body = g.do("GET", "/no/such/route", "", nil)
	wantProblem(t, resp, body, 404, "no such route")
	resp, body = g.do("DELETE", "/v1/publish/x", adminToken, nil)
	wantProblem(t, resp, body, 405, "not allowed")
}

func TestNATSDownIs503WithRetryAfter(t *testing.T) {
	t.Parallel()
	g := startGateway(t, func(o *gatewayOptions) {
		o.external = true
		o.pool.ReconnectWait = 20 * time.Millisecond
		o.pool.ConnectTimeout = 500 * time.Millisecond
	})
	if resp, _ := g.do("POST", "/v1/publish/x", adminToken, nil); resp.StatusCode != 204 {
		t.Fatalf("publish with NATS up: %d", resp.StatusCode)
	}
	_ = g.e.Shutdown(context.Background())
	waitFor(t, "readyz to fail", func() bool {
		resp, _ := g.do("GET", "/readyz", "", nil)
		return resp.StatusCode == 503
	})
	for _, path := range []string{"/v1/publish/x", "/v1/request/x"} {
		start := time.Now()
		resp, body := g.do("POST", path, adminToken, nil)
		wantProblem(t, resp, body, 503, "")
		if resp.Header.Get("Retry-After") == "" {
			t.Fatalf("%s: 503 without Retry-After", path)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("%s took %v to answer 503", path, d)
		}
	}
	// A token never seen before cannot be checked: 503, not 401.
	resp, body := g.do("POST", "/v1/publish/x", ordersToken, nil)
	wantProblem(t, resp, body, 503, "")
}

// A batch's memory is reused by the next batches (batchPool): nothing of
// an entry — headers, reply, data, an error — may reach a later one.
func TestBatchesShareNothingThroughReusedMemory(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	sub := g.nativeSub("reuse.>")
	full := `{"subject":"reuse.full","reply":"reuse.answers","headers":{"Trace-Id":"abc"},"data":"hello"}` + "\n" +
		`{"subject":"reuse..bad","data":"x"}` + "\n"
	bare := `{"subject":"reuse.bare"}` + "\n" + `{"subject":"reuse.bare"}` + "\n"
	// Alternate: the race detector drops some of sync.Pool's puts, so
	// one pair could miss the reuse.
	for range 20 {
		if r, body := g.do("POST", "/v1/publish", adminToken, strings.NewReader(full), "Content-Type", "application/x-ndjson"); r.StatusCode != http.StatusMultiStatus {
			t.Fatalf("full batch: %d %s", r.StatusCode, body)
		}
		// Of unknown length (chunked), so read into the reused buffer
		// the other way.
		if r, body := g.do("POST", "/v1/publish", adminToken, io.MultiReader(strings.NewReader(bare)), "Content-Type", "application/x-ndjson"); r.StatusCode != http.StatusNoContent {
			t.Fatalf("bare batch: %d %s, want 204: an error of the batch before?", r.StatusCode, body)
		}
		for _, want := range []string{"reuse.full", "reuse.bare", "reuse.bare"} {
			m, err := sub.NextMsg(2 * time.Second)
			if err != nil {
				t.Fatalf("waiting for %s: %v", want, err)
			}
			if m.Subject != want {
				t.Fatalf("got %s, want %s", m.Subject, want)
			}
			if want == "reuse.bare" && (len(m.Data) != 0 || m.Reply != "" || len(m.Header) != 0) {
				t.Fatalf("bare entry arrived with data %q reply %q headers %v", m.Data, m.Reply, m.Header)
			}
		}
	}
}
