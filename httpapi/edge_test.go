package httpapi

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go"
)

func withAssets(o *gatewayOptions) {
	o.cfg.Assets = fstest.MapFS{}
	for _, n := range []string{"index.html", "client.js", "client.d.ts", "console.js", "console.css"} {
		o.cfg.Assets.(fstest.MapFS)[n] = &fstest.MapFile{Data: []byte("x")}
	}
}

// TestHeadIsAnsweredWhereverANonStreamingGetIs walks every GET route the
// router has, so a GET route added later is checked too.
func TestHeadIsAnsweredWhereverANonStreamingGetIs(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withAssets)
	n := 0
	err := chi.Walk(g.api.router, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		if method != http.MethodGet {
			return nil
		}
		n++
		path := route
		for strings.Contains(path, "{") {
			i, j := strings.Index(path, "{"), strings.Index(path, "}")
			path = path[:i] + "x" + path[j+1:]
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodHead, g.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		head, err := g.client.Do(req)
		if err != nil {
			t.Errorf("HEAD %s: %v", path, err)
			return nil
		}
		head.Body.Close()
		if streamingGETs[route] {
			if allow := head.Header.Get("Allow"); head.StatusCode != 405 || !slices.Contains(strings.Split(allow, ", "), "GET") || strings.Contains(allow, "HEAD") {
				t.Errorf("HEAD %s (a stream): %d Allow %q, want 405 with GET but not HEAD allowed", path, head.StatusCode, allow)
			}
			return nil
		}
		get, body := g.do(http.MethodGet, path, adminToken, nil)
		if head.StatusCode != get.StatusCode || head.Header.Get("Content-Type") != get.Header.Get("Content-Type") {
			t.Errorf("HEAD %s: %d %q; GET: %d %q", path, head.StatusCode, head.Header.Get("Content-Type"), get.StatusCode, get.Header.Get("Content-Type"))
		}
		if head.ContentLength > 0 && head.ContentLength != int64(len(body)) {
			t.Errorf("HEAD %s: Content-Length %d, GET's body is %d bytes", path, head.ContentLength, len(body))
		}
		return nil
	})
	if err != nil || n < 8 {
		t.Fatalf("walked %d GET routes: %v", n, err)
	}
}

func TestMethodNotAllowedCarriesAllow(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withAssets)
	for _, tc := range []struct{ method, path, allow string }{
		{"POST", "/healthz", "GET, HEAD"},
		{"DELETE", "/readyz", "GET, HEAD"},
		{"GET", "/v1/publish/x", "POST"},
		{"HEAD", "/v1/publish/x", "POST"},
		{"PUT", "/v1/request/x", "POST"},
		{"POST", "/v1/ws", "GET"},
		{"HEAD", "/v1/ws", "GET"},
		{"HEAD", "/v1/subscribe/x", "GET"},
		{"POST", "/client.js", "GET, HEAD"},
	} {
		resp, body := g.do(tc.method, tc.path, adminToken, nil)
		if resp.StatusCode != 405 || resp.Header.Get("Allow") != tc.allow {
			t.Errorf("%s %s: %d Allow %q, want 405 Allow %q", tc.method, tc.path, resp.StatusCode, resp.Header.Get("Allow"), tc.allow)
			continue
		}
		if tc.method != "HEAD" {
			wantProblem(t, resp, body, 405, "this route answers "+tc.allow)
		}
	}
}

// TestHeadDoesNotOpenAStream: a HEAD on a stream returns at once and
// leaves no subscription on the server.
func TestHeadDoesNotOpenAStream(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	before := g.serverSubs()
	req, _ := http.NewRequest(http.MethodHead, g.URL+"/v1/subscribe/head.x", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	c := &http.Client{Timeout: 3 * time.Second, Transport: g.client.Transport}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("HEAD on a stream: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 405 || g.serverSubs() != before {
		t.Fatalf("HEAD on a stream: %d, subscriptions %d → %d", resp.StatusCode, before, g.serverSubs())
	}
}

// TestBareAuthorizationIsAcceptedOnEveryRoute: "Authorization: <token>"
// (one word, no scheme), as Synadia's clients send it, works wherever
// "Bearer <token>" does; other schemes stay 401.
func TestBareAuthorizationIsAcceptedOnEveryRoute(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	nc := g.native(adminToken)
	nc.Subscribe("bare.svc", func(m *nats.Msg) { m.Respond([]byte("pong")) })
	nc.Flush()
	bare := func(method, path, ct, body string) *http.Response {
		resp, _ := g.do(method, path, "", strings.NewReader(body), "Authorization", ordersToken, "Content-Type", ct)
		return resp
	}
	if r := bare("POST", "/v1/publish/orders.bare", "", "x"); r.StatusCode != 204 {
		t.Errorf("bare publish: %d", r.StatusCode)
	}
	if r := bare("POST", "/v1/publish", "application/x-ndjson", `{"subject":"orders.bare","data":"x"}`+"\n"); r.StatusCode != 204 {
		t.Errorf("bare batch: %d", r.StatusCode)
	}
	resp, body := g.do("POST", "/v1/request/bare.svc", "", nil, "Authorization", adminToken)
	if resp.StatusCode != 200 || string(body) != "pong" {
		t.Errorf("bare request: %d %q", resp.StatusCode, body)
	}
	// The permissions are the bare token's own: orders may not publish here.
	if r := bare("POST", "/v1/publish/billing.x", "", "x"); r.StatusCode != 403 {
		t.Errorf("bare orders token outside its permissions: %d, want 403", r.StatusCode)
	}
	req, _ := http.NewRequest("GET", g.URL+"/v1/subscribe/orders.bare", nil)
	req.Header.Set("Authorization", ordersToken)
	sse, err := g.client.Do(req)
	if err != nil || sse.StatusCode != 200 {
		t.Fatalf("bare subscribe: %v %v", err, sse)
	}
	sse.Body.Close()
	ws, resp, err := g.tryDialWS("", "Authorization", ordersToken)
	if err != nil {
		t.Fatalf("bare WebSocket upgrade: %v %v", err, resp)
	}
	ws.next("connected")

	for _, h := range []string{"Basic " + ordersToken, "Token " + ordersToken, "Bearer", "bearer  ", "Basic"} {
		resp, body := g.do("POST", "/v1/publish/orders.x", "", nil, "Authorization", h)
		wantProblem(t, resp, body, 401, "")
	}
	// A bare word NATS rejects is an invalid token, as with Bearer.
	resp, body = g.do("POST", "/v1/publish/orders.x", "", nil, "Authorization", "not-a-token")
	wantProblem(t, resp, body, 401, "")
	if !strings.Contains(resp.Header.Get("WWW-Authenticate"), "invalid_token") {
		t.Errorf("rejected bare token: WWW-Authenticate %q", resp.Header.Get("WWW-Authenticate"))
	}
}

func TestCredentialQueryParametersAreRefused(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	for _, q := range []string{"authorization", "Authorization", "api_key", "API_KEY", "apikey", "ApiKey"} {
		for _, path := range []string{"/v1/publish/x", "/v1/subscribe/x", "/v1/ws"} {
			method := "GET"
			if strings.HasPrefix(path, "/v1/publish") {
				method = "POST"
			}
			resp, body := g.do(method, path+"?"+q+"=secret", "", nil)
			wantProblem(t, resp, body, 400, "Authorization")
			if !strings.Contains(resp.Header.Get("Content-Type"), "problem") || strings.Contains(string(body), "secret") {
				t.Errorf("%s %s?%s=…: %s", method, path, q, body)
			}
		}
	}
}

// TestEmptySubjectIsBadSubject: "POST /v1/publish/" is the right route
// with no subject, not an unknown route. Sent with a plain client: an
// empty path parameter matches no route of openapi.yaml.
func TestEmptySubjectIsBadSubject(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	for _, tc := range []struct{ method, path string }{
		{"POST", "/v1/publish/"}, {"POST", "/v1/request/"}, {"GET", "/v1/subscribe/"},
	} {
		req, _ := http.NewRequest(tc.method, g.URL+tc.path, nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		wantProblem(t, resp, body, 400, "the subject is empty")
		if !strings.Contains(string(body), "bad-subject") {
			t.Errorf("%s %s: %s, want kind bad-subject", tc.method, tc.path, body)
		}
	}
	resp, body := g.do("GET", "/v1/nothing/", adminToken, nil)
	wantProblem(t, resp, body, 404, "no such route")
}

// TestSubjectEndingInDotHintsAtQuoting: curl .../v1/subscribe/demo.> in
// a shell sends "demo." (and writes the output to a file named "").
func TestSubjectEndingInDotHintsAtQuoting(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	for _, tc := range []struct{ method, path string }{
		{"GET", "/v1/subscribe/demo."}, {"POST", "/v1/publish/demo."}, {"POST", "/v1/request/demo."},
	} {
		resp, body := g.do(tc.method, tc.path, adminToken, nil)
		wantProblem(t, resp, body, 400, "quote URLs that contain '>'")
	}
	resp, body := g.do("POST", "/v1/publish/a..b", adminToken, nil)
	wantProblem(t, resp, body, 400, "empty token")
	if strings.Contains(string(body), "quote") {
		t.Errorf("a subject not ending in a dot got the quoting hint: %s", body)
	}
}

// TestRevokedTokenStreamEndsWithReason: a tokens-file reload that removes
// a token ends its streams with {"op":"status","nats":"closed","reason":
// "token revoked"}, and the log says so, not the token's last (unrelated)
// permissions violation.
func TestRevokedTokenStreamEndsWithReason(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	open := func(accept string) *bufio.Scanner {
		req, _ := http.NewRequest("GET", g.URL+"/v1/subscribe/orders.revoked", nil)
		req.Header.Set("Authorization", "Bearer "+ordersToken)
		req.Header.Set("Accept", accept)
		resp, err := g.client.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("subscribe: %v %v", err, resp)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return bufio.NewScanner(resp.Body)
	}
	sse, nd := open("text/event-stream"), open("application/x-ndjson")
	// An earlier permissions violation on the same connection.
	resp, body := g.do("POST", "/v1/publish/billing.x", ordersToken, nil)
	wantProblem(t, resp, body, 403, "")

	_, keys, err := g.e.SetTokens(testTokens()[:1])
	if err != nil {
		t.Fatal(err)
	}
	g.pool.Forget(keys...)
	const want = `{"op":"status","nats":"closed","reason":"token revoked"}`
	var sseLines []string
	for sse.Scan() {
		sseLines = append(sseLines, sse.Text())
	}
	if got := strings.Join(sseLines, "\n"); !strings.Contains(got, "event: status\ndata: "+want) {
		t.Errorf("SSE stream ended with %q, want an event: status with %s", got, want)
	}
	var last string
	for nd.Scan() {
		if nd.Text() != "" {
			last = nd.Text()
		}
	}
	if last != want {
		t.Errorf("NDJSON stream's last line %q, want %s", last, want)
	}
	waitFor(t, "the close logged", func() bool { return strings.Contains(g.logs.String(), `reason="token revoked"`) })
	for _, l := range strings.Split(g.logs.String(), "\n") {
		if strings.Contains(l, "nats connection closed") && strings.Contains(strings.ToLower(l), "permission") {
			t.Errorf("the close is logged with a stale permissions error: %s", l)
		}
	}
}

func TestOriginRefusalNamesTheFlag(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	req, _ := http.NewRequest("OPTIONS", g.URL+"/v1/publish/x", nil)
	req.Header.Set("Origin", "https://elsewhere.test")
	req.Header.Set("Access-Control-Request-Method", "POST")
	resp, err := g.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	wantProblem(t, resp, body, 403, "--allowed-origins")
	_, wsResp, err := g.tryDialWS(adminToken, "Origin", "https://elsewhere.test")
	if err == nil || wsResp.StatusCode != 403 {
		t.Fatalf("WebSocket from another origin: %v %v", err, wsResp)
	}
}
