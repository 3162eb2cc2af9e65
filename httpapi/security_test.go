package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"

	"github.com/natsgate/natsgate/bridge"
)

func TestTwoTokensAllowAndDenyOnEveryPath(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	nc := g.native(adminToken)
	nc.Subscribe("billing.echo", func(m *nats.Msg) { m.Respond([]byte("bill")) })
	nc.Subscribe("orders.echo", func(m *nats.Msg) { m.Respond([]byte("order")) })
	nc.Flush()

	// HTTP publish and request: admin everywhere, orders only under orders.>.
	for _, tc := range []struct {
		token, path string
		status      int
	}{
		{adminToken, "/v1/publish/billing.x", 204},
		{adminToken, "/v1/request/billing.echo", 200},
		{ordersToken, "/v1/publish/orders.x", 204},
		{ordersToken, "/v1/request/orders.echo", 200},
		{ordersToken, "/v1/publish/billing.x", 403},
		{ordersToken, "/v1/request/billing.echo", 403},
	} {
		resp, body := g.do("POST", tc.path, tc.token, strings.NewReader("x"))
		if resp.StatusCode != tc.status {
			t.Fatalf("%s with %s: %d %s, want %d", tc.path, tc.token[:6], resp.StatusCode, body, tc.status)
		}
		if tc.status == 403 {
			wantProblem(t, resp, body, 403, "billing")
		}
	}
	// A 403 right after a 204 on the same connection, and vice versa:
	// violations are attributed to the right request.
	for range 5 {
		if r, _ := g.do("POST", "/v1/publish/orders.ok", ordersToken, nil); r.StatusCode != 204 {
			t.Fatalf("allowed: %d", r.StatusCode)
		}
		if r, _ := g.do("POST", "/v1/publish/billing.no", ordersToken, nil); r.StatusCode != 403 {
			t.Fatalf("denied: %d", r.StatusCode)
		}
	}

	// SSE: a forbidden subscription is a 403 before any stream starts.
	resp, body := g.do("GET", "/v1/subscribe/billing.>", ordersToken, nil)
	wantProblem(t, resp, body, 403, "billing")
	s := g.stream("/v1/subscribe/orders.>", ordersToken, "")
	if s.resp.StatusCode != 200 {
		t.Fatalf("allowed stream: %d", s.resp.StatusCode)
	}
	s.close()

	// WebSocket sub/pub/req for both tokens.
	for _, tc := range []struct {
		token   string
		allowed bool
	}{{adminToken, true}, {ordersToken, false}} {
		w := g.dialWS(tc.token)
		w.next("connected")
		want := "ok"
		if !tc.allowed {
			want = "error"
		}
		w.send(map[string]any{"op": "sub", "sid": "s", "subject": "billing.sub.>"})
		if f := w.next(want); !tc.allowed && f["status"].(float64) != 403 {
			t.Fatalf("sub: %v", f)
		}
		w.send(map[string]any{"op": "pub", "subject": "billing.x", "id": "p"})
		if f := w.next(want); !tc.allowed && f["status"].(float64) != 403 {
			t.Fatalf("pub: %v", f)
		}
		w.send(map[string]any{"op": "req", "subject": "billing.echo", "id": "r"})
		if !tc.allowed {
			if f := w.next("error"); f["status"].(float64) != 403 {
				t.Fatalf("req: %v", f)
			}
		} else if f := w.next("reply"); f["data"] != "bill" {
			t.Fatalf("req: %v", f)
		}
	}

	// Native NATS clients with the same tokens get the same rules from
	// the same server.
	errs := make(chan error, 4)
	native, err := nats.Connect(g.e.ClientURL(), nats.Token(ordersToken),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer native.Close()
	native.Publish("billing.x", nil)
	native.Flush()
	select {
	case err := <-errs:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatalf("native publish error: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("native client with the orders token published to billing.x without a violation")
	}
	if err := native.Publish("orders.x", nil); err != nil || native.Flush() != nil {
		t.Fatal("native allowed publish failed")
	}
}

func TestCORSAndOriginUseOneAllowList(t *testing.T) {
	t.Parallel()
	g := startGateway(t, func(o *gatewayOptions) {
		o.cfg.AllowedOrigins = []string{"app.example.com", "https://*.trusted.test"}
		o.cfg.Assets = fstest.MapFS{"index.html": {Data: []byte("<!doctype html>")}}
	})
	preflight := func(origin, method, headers string) *http.Response {
		req, _ := http.NewRequest("OPTIONS", g.URL+"/v1/publish/x", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", method)
		req.Header.Set("Access-Control-Request-Headers", headers)
		resp, err := g.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	for _, origin := range []string{"http://app.example.com", "https://app.example.com", "https://ui.trusted.test"} {
		resp := preflight(origin, "POST", "authorization, content-type, natsh-trace")
		if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != origin ||
			!strings.Contains(strings.ToLower(resp.Header.Get("Access-Control-Allow-Headers")), "authorization") ||
			!strings.Contains(resp.Header.Get("Access-Control-Allow-Methods"), "POST") {
			t.Fatalf("preflight from %s: %d %v", origin, resp.StatusCode, resp.Header)
		}
	}
	for _, tc := range []struct{ origin, method, headers string }{
		{"https://evil.test", "POST", "authorization"},
		{"http://ui.trusted.test", "POST", "authorization"}, // pattern demands https
		{"https://app.example.com", "DELETE", "authorization"},
		{"https://app.example.com", "POST", "cookie"},
	} {
		resp := preflight(tc.origin, tc.method, tc.headers)
		if resp.StatusCode < 400 || resp.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Fatalf("preflight %+v allowed: %d %v", tc, resp.StatusCode, resp.Header)
		}
	}
	// Actual cross-origin requests: allowed origins may read the answer
	// and the reply's NatsH-* headers; others get no CORS headers.
	nc := g.native(adminToken)
	nc.Subscribe("svc", func(m *nats.Msg) {
		r := nats.NewMsg(m.Reply)
		r.Header.Set("Who", "svc")
		m.RespondMsg(r)
	})
	nc.Flush()
	resp, _ := g.do("POST", "/v1/request/svc", adminToken, nil, "Origin", "https://app.example.com")
	if resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
		!strings.Contains(resp.Header.Get("Access-Control-Expose-Headers"), "NatsH-Who") {
		t.Fatalf("allowed origin response headers %v", resp.Header)
	}
	resp, _ = g.do("POST", "/v1/publish/x", adminToken, nil, "Origin", "https://evil.test")
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatal("a disallowed origin got Access-Control-Allow-Origin")
	}
	// WebSocket upgrades check the same list; same-origin always passes.
	for origin, ok := range map[string]bool{
		"https://app.example.com": true, "https://evil.test": false, g.URL: true, "null": false,
	} {
		_, resp, err := g.tryDialWS(adminToken, "Origin", origin)
		if ok != (err == nil) {
			t.Fatalf("WebSocket from %s: err %v, want allowed=%v", origin, err, ok)
		}
		if !ok && resp.StatusCode != 403 {
			t.Fatalf("WebSocket from %s: %d, want 403", origin, resp.StatusCode)
		}
	}
	// The console page carries security headers.
	resp, _ = g.do("GET", "/", "", nil)
	for _, h := range []string{"Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy"} {
		if resp.Header.Get(h) == "" {
			t.Fatalf("console page without %s", h)
		}
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || strings.Contains(csp, "unsafe") {
		t.Fatalf("weak CSP %q", csp)
	}
}

func TestFailedAuthenticationsAreRateLimitedPerAddress(t *testing.T) {
	t.Parallel()
	g := startGateway(t, func(o *gatewayOptions) {
		o.cfg.AuthFailureLimit = 3
		o.cfg.AuthFailureWindow = time.Minute
	})
	for i := range 3 {
		resp, body := g.do("POST", "/v1/publish/x", "bad-"+string(rune('a'+i)), nil)
		wantProblem(t, resp, body, 401, "rejected")
	}
	resp, body := g.do("POST", "/v1/publish/x", "bad-d", nil)
	wantProblem(t, resp, body, 429, "failed authentications")
	if ra := resp.Header.Get("Retry-After"); ra == "" || ra == "0" {
		t.Fatalf("Retry-After %q", ra)
	}
	// The limit is on this address: even a good token waits, and the
	// WebSocket connect frame path obeys it too.
	resp, body = g.do("POST", "/v1/publish/x", adminToken, nil)
	wantProblem(t, resp, body, 429, "failed")
	w := g.dialWS("")
	w.send(map[string]any{"op": "connect", "token": adminToken})
	if code := w.closed(); code != 4429 {
		t.Fatalf("WebSocket connect while limited closed %d, want 4429", code)
	}
	if got := g.pool.Stats().Conns; got != 0 {
		t.Fatalf("limited requests opened %d NATS connections", got)
	}
}

// TestTokensNeverAppearInLogsMetricsOrErrors runs a full session with
// recognisable tokens, captures every log line (the gateway's and the
// embedded nats-server's, at debug level), the metrics and every response,
// and finds no token in any of them.
func TestTokensNeverAppearInLogsMetricsOrErrors(t *testing.T) {
	t.Parallel()
	const wrong = "wrong-Tok3n-with-a-recognisable-SECRET"
	g := startGateway(t, func(o *gatewayOptions) { o.cfg.AuthFailureLimit = -1 })
	var seen strings.Builder
	record := func(resp *http.Response, body []byte) {
		for k, vs := range resp.Header {
			seen.WriteString(k + ": " + strings.Join(vs, ",") + "\n")
		}
		seen.Write(body)
	}
	nc := g.native(adminToken)
	nc.Subscribe("echo", func(m *nats.Msg) { m.Respond(m.Data) })
	nc.Flush()
	for _, tok := range []string{adminToken, ordersToken, wrong} {
		for _, p := range []string{"/v1/publish/orders.a", "/v1/publish/billing.a", "/v1/request/echo", "/v1/request/orders.none", "/v1/subscribe/x.>"} {
			method := "POST"
			if strings.Contains(p, "subscribe") {
				method = "GET"
				if tok == adminToken {
					continue // a live stream; covered below
				}
			}
			record(g.do(method, p, tok, strings.NewReader("payload")))
		}
		record(g.do("POST", "/v1/publish/x?token="+tok, "", nil))
		record(g.do("POST", "/v1/publish/x", "", nil, "Authorization", "Basic "+tok))
		record(g.do("POST", "/v1/publish/x", "", nil, "Authorization", tok))
		if w, resp, err := g.tryDialWS(tok); err == nil {
			w.next("connected")
			w.send(map[string]any{"op": "sub", "sid": "s", "subject": "billing.x"})
			w.send(map[string]any{"op": "req", "id": "r", "subject": "echo", "data": "x"})
			w.send(map[string]any{"op": "connect", "token": tok})
			w.send(map[string]any{"op": "connect", "token": tok + "-changed"})
			w.send(map[string]any{"op": "ping"})
			for f := range w.frames {
				b, _ := json.Marshal(f)
				seen.Write(b)
				if f["op"] == "pong" {
					break
				}
			}
			w.c.Close(websocket.StatusNormalClosure, "")
		} else if resp != nil {
			body, _ := io.ReadAll(resp.Body)
			record(resp, body)
		}
		w := g.dialWS("")
		w.send(map[string]any{"op": "connect", "token": tok})
		// The session may already be closed (4401): writes may fail.
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		w.c.Write(ctx, websocket.MessageText, []byte(`{"op":"pub","subject":"orders.z","id":"p"}`))
		w.c.Write(ctx, websocket.MessageText, []byte(`{"op":"ping"}`))
		cancel()
		w.c.Close(websocket.StatusNormalClosure, "")
	}
	s := g.stream("/v1/subscribe/orders.>", adminToken, "")
	g.do("POST", "/v1/publish/orders.q", adminToken, nil)
	s.next(t, isData)
	s.close()
	record(g.do("GET", "/metrics", "", nil))
	time.Sleep(100 * time.Millisecond) // let closing sessions log
	all := g.logs.String() + seen.String()
	if !strings.Contains(g.logs.String(), "request_id=") || !strings.Contains(g.logs.String(), "token=orders") {
		t.Fatalf("the logs are not what this test expects to search:\n%s", g.logs)
	}
	for _, tok := range []string{adminToken, ordersToken, wrong, "recognisable-SECRET"} {
		if i := strings.Index(all, tok); i >= 0 {
			t.Fatalf("token text %q found: …%s…", tok, all[max(0, i-200):min(len(all), i+100)])
		}
	}
	// Nor a plain hash of one, which a guessed token can be checked
	// against offline: a token without a name is logged by its keyed
	// fingerprint.
	for _, tok := range []string{adminToken, ordersToken, wrong} {
		sum := sha256.Sum256([]byte(tok))
		if h := hex.EncodeToString(sum[:])[:12]; strings.Contains(all, h) {
			i := strings.Index(all, h)
			t.Fatalf("a prefix of a token's SHA-256 found: …%s…", all[max(0, i-200):min(len(all), i+100)])
		}
	}
	if fp := bridge.KeyOf(wrong).String(); !strings.Contains(g.logs.String(), "token="+fp) {
		t.Fatalf("the rejected token is not logged by its fingerprint %s:\n%s", fp, g.logs)
	}
}
