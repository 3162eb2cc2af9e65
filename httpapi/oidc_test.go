package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/nats-io/nats.go"

	"github.com/natsgate/natsgate/bridge"
	"github.com/natsgate/natsgate/internal/oidctest"
)

const oidcAudience = "natsgate-test"

// withOIDC has the test gateway's embedded server accept iss's tokens
// (and the test tokens alongside).
func withOIDC(t testing.TB, iss *oidctest.Issuer) func(*gatewayOptions) {
	v, err := bridge.NewOIDCVerifier(context.Background(), bridge.OIDCConfig{Issuer: iss.URL, Audience: oidcAudience})
	if err != nil {
		t.Fatalf("NewOIDCVerifier: %v", err)
	}
	return func(o *gatewayOptions) { o.oidc = v }
}

// oidcOrders is a valid token allowed under orders.> only.
func oidcOrders(t testing.TB, iss *oidctest.Issuer, sub string, ttl time.Duration) string {
	c := iss.Claims(sub, oidcAudience, ttl)
	c["nats"] = map[string]any{
		"publish":   map[string]any{"allow": []string{"orders.>"}},
		"subscribe": map[string]any{"allow": []string{"orders.>", "_INBOX.>"}},
	}
	return iss.Sign(t, "rsa-1", c)
}

// badOIDCTokens are tokens the gateway must refuse; reachesNATS says
// whether the gateway passes it on (the rest fail its own size check).
func badOIDCTokens(t testing.TB, iss *oidctest.Issuer) []struct {
	name, token string
	reachesNATS bool
} {
	iss.AddKey(t, "unpublished", jose.ES256)
	claims := func(f func(map[string]any)) map[string]any {
		c := iss.Claims("mallory", oidcAudience, time.Hour)
		if f != nil {
			f(c)
		}
		return c
	}
	return []struct {
		name, token string
		reachesNATS bool
	}{
		{"unknown key", iss.Sign(t, "unpublished", claims(nil)), true},
		{"alg none", oidctest.Unsigned(t, "rsa-1", claims(nil)), true},
		{"HS256 keyed with the public key", iss.SignHS256WithPublicKey(t, "rsa-1", claims(nil)), true},
		{"wrong iss", iss.Sign(t, "rsa-1", claims(func(c map[string]any) { c["iss"] = "https://evil.example/realms/test" })), true},
		{"wrong aud", iss.Sign(t, "rsa-1", claims(func(c map[string]any) { c["aud"] = "another-app" })), true},
		{"expired", iss.Sign(t, "rsa-1", claims(func(c map[string]any) { c["exp"] = time.Now().Add(-time.Minute).Unix() })), true},
		{"not yet valid", iss.Sign(t, "ec-1", claims(func(c map[string]any) { c["nbf"] = time.Now().Add(10 * time.Minute).Unix() })), true},
		{"forged signature", "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS0xIn0.eyJzdWIiOiJ4In0.bm90LWEtc2lnbmF0dXJl", true},
		{"malformed JWT", "eyJhbGciOiJSUzI1NiJ9.@@not-base64@@.bm90LWEtc2lnbmF0dXJl", true},
		{"not a JWT at all", "neither-a-static-token-nor-a-JWT", true},
		{"permissions claim of the wrong shape", iss.Sign(t, "rsa-1", claims(func(c map[string]any) {
			c["nats"] = map[string]any{"publish": []string{">"}}
		})), true},
		{"64 KiB", iss.SignSized(t, "rsa-1", claims(nil), 64<<10), false},
	}
}

// TestOIDCBadTokensAre401QuicklyAndReachNothing sends each kind of bad
// token over HTTP and as a WebSocket connect frame: each is a quick 401
// (4401), the callout refused each one that reached NATS, and no NATS
// connection or message came of any of them.
func TestOIDCBadTokensAre401QuicklyAndReachNothing(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	g := startGateway(t, withOIDC(t, iss), func(o *gatewayOptions) { o.cfg.AuthFailureLimit = -1 })
	spy := g.nativeSub(">")
	if resp, body := g.do("POST", "/v1/publish/orders.ok", oidcOrders(t, iss, "alice", time.Hour), strings.NewReader("ok")); resp.StatusCode != 204 {
		t.Fatalf("a good token: %d %s", resp.StatusCode, body)
	}
	if _, err := spy.NextMsg(2 * time.Second); err != nil {
		t.Fatalf("the good token's message: %v", err)
	}
	before, conns := g.e.CalloutStats(), g.pool.Stats().Conns
	reaching := 0
	for _, tc := range badOIDCTokens(t, iss) {
		if tc.reachesNATS {
			reaching++
		}
		start := time.Now()
		resp, body := g.do("POST", "/v1/publish/orders.bad", tc.token, strings.NewReader("bad"))
		wantProblem(t, resp, body, 401, "")
		if h := resp.Header.Get("WWW-Authenticate"); !strings.Contains(h, `error="invalid_token"`) {
			t.Errorf("%s: WWW-Authenticate %q", tc.name, h)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s: 401 after %v", tc.name, d)
		}
		w := g.dialWS("")
		if tc.reachesNATS {
			w.send(map[string]any{"op": "connect", "token": tc.token})
			if code := w.closed(); code != closeUnauthorized {
				t.Errorf("%s: WebSocket closed %d, want %d", tc.name, code, closeUnauthorized)
			}
			continue
		}
		// Over the connect frame's bound: the gateway closes 1009 while
		// the client may still be writing, which can then see a reset
		// before the close frame.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = w.c.Write(ctx, websocket.MessageText, []byte(`{"op":"connect","token":"`+tc.token+`"}`))
		cancel()
		if code := w.closed(); code != websocket.StatusMessageTooBig && code != -1 {
			t.Errorf("%s: WebSocket closed %d, want %d", tc.name, code, websocket.StatusMessageTooBig)
		}
	}
	after := g.e.CalloutStats()
	// The WebSocket attempt with the same token was a remembered
	// rejection: the callout saw each token once.
	if got := after.Rejected - before.Rejected; got != uint64(reaching) {
		t.Errorf("the callout refused %d tokens, want %d", got, reaching)
	}
	if after.Accepted != before.Accepted {
		t.Errorf("the callout accepted %d bad tokens", after.Accepted-before.Accepted)
	}
	if got := g.pool.Stats().Conns; got != conns {
		t.Errorf("NATS connections %d, want %d", got, conns)
	}
	if m, err := spy.NextMsg(200 * time.Millisecond); err == nil {
		t.Errorf("a message reached NATS: %s %q", m.Subject, m.Data)
	}
}

// TestOIDCLargeTokensWorkOnEveryPath: a 6 KiB token and one just under
// the gateway's 16 KiB bound, over HTTP, a WebSocket Authorization header
// and a WebSocket connect frame.
func TestOIDCLargeTokensWorkOnEveryPath(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	g := startGateway(t, withOIDC(t, iss))
	for _, size := range []int{6 << 10, maxTokenLen - 64} {
		c := iss.Claims("big", oidcAudience, time.Hour)
		c["nats"] = map[string]any{"publish": map[string]any{"allow": []string{"orders.>"}}}
		tok := iss.SignSized(t, "rsa-1", c, size)
		if resp, body := g.do("POST", "/v1/publish/orders.big", tok, nil); resp.StatusCode != 204 {
			t.Fatalf("HTTP with a %d-byte token: %d %s", len(tok), resp.StatusCode, body)
		}
		g.dialWS(tok).next("connected")
		w := g.dialWS("")
		w.send(map[string]any{"op": "connect", "token": tok})
		w.next("connected")
	}
}

// TestOIDCTokensNeverAppearInLogsMetricsOrErrors is the secrets test for
// OIDC tokens: good, bad and refused ones on every path, every log line
// (the gateway's, the callout's, nats-server's, at debug), the metrics and
// the responses; no part of any token appears.
func TestOIDCTokensNeverAppearInLogsMetricsOrErrors(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	g := startGateway(t, withOIDC(t, iss), func(o *gatewayOptions) { o.cfg.AuthFailureLimit = -1 })
	var seen strings.Builder
	record := func(resp *http.Response, body []byte) {
		for k, vs := range resp.Header {
			seen.WriteString(k + ": " + strings.Join(vs, ",") + "\n")
		}
		seen.Write(body)
	}
	nc := g.native(adminToken)
	nc.Subscribe("orders.echo", func(m *nats.Msg) { m.Respond(m.Data) })
	nc.Flush()
	good := oidcOrders(t, iss, "alice", time.Hour)
	tokens := []string{good}
	for _, tc := range badOIDCTokens(t, iss) {
		tokens = append(tokens, tc.token)
	}
	for _, tok := range tokens {
		for _, p := range []string{"/v1/publish/orders.a", "/v1/publish/billing.a", "/v1/request/orders.echo", "/v1/request/orders.none", "/v1/subscribe/billing.>"} {
			method := "POST"
			if strings.Contains(p, "subscribe") {
				method = "GET"
			}
			record(g.do(method, p, tok, strings.NewReader("payload")))
		}
		record(g.do("POST", "/v1/publish/orders.x", "", nil, "Authorization", tok))
		record(g.do("POST", "/v1/publish/x?access_token="+tok, "", nil))
		if w, resp, err := g.tryDialWS(tok); err == nil {
			w.send(map[string]any{"op": "sub", "sid": "s", "subject": "billing.x"})
			w.send(map[string]any{"op": "req", "id": "r", "subject": "orders.echo", "data": "x"})
			for _, other := range tokens { // refreshes: refused but for the good one
				w.send(map[string]any{"op": "connect", "token": other, "id": "c"})
			}
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
		w.sendMayBeRefused(map[string]any{"op": "connect", "token": tok})
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		w.c.Write(ctx, websocket.MessageText, []byte(`{"op":"pub","subject":"orders.z","id":"p"}`))
		cancel()
		w.c.Close(websocket.StatusNormalClosure, "")
	}
	s := g.stream("/v1/subscribe/orders.>", good, "")
	g.do("POST", "/v1/publish/orders.q", good, nil)
	s.next(t, isData)
	s.close()
	record(g.do("GET", "/metrics", "", nil))
	time.Sleep(100 * time.Millisecond)
	logs := g.logs.String()
	if !strings.Contains(logs, "token=oidc:alice") || !strings.Contains(logs, "callout: OIDC token refused") {
		t.Fatalf("the logs are not what this test expects to search:\n%s", logs)
	}
	all := logs + seen.String()
	for _, tok := range tokens {
		for i, part := range strings.Split(tok, ".") {
			if len(part) < 16 {
				continue
			}
			if j := strings.Index(all, part[len(part)-16:]); j >= 0 {
				t.Fatalf("part %d of a token found: …%s…", i, all[max(0, j-200):min(len(all), j+100)])
			}
		}
	}
}

// TestOIDCUsersHaveJetStream: the callout's own account is the system
// account, so OIDC users land in the global account, where the embedded
// server's JetStream is enabled.
func TestOIDCUsersHaveJetStream(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	g := startGateway(t, withOIDC(t, iss), withJetStream)
	c := iss.Claims("js-user", oidcAudience, time.Hour)
	c["nats"] = map[string]any{}
	tok := iss.Sign(t, "ec-1", c)
	req, _ := http.NewRequest("PUT", g.URL+"/v1/streams/OIDC", strings.NewReader(`{"subjects":["oidc.>"]}`))
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := g.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("create stream with an OIDC token: %d %s", resp.StatusCode, body)
	}
	if resp, body := g.jsPublish(tok, "oidc.x", "stored"); resp.StatusCode != 200 || !strings.Contains(string(body), `"seq":1`) {
		t.Fatalf("stored publish: %d %s", resp.StatusCode, body)
	}
}

// BenchmarkFirstRequest measures a publish (the handler chain, without
// the network, as BenchmarkPublishHandler) with a token the gateway holds
// no connection for ("first": a NATS connect; through the callout, its
// round trip too) and a repeat one (the pooled connection). Three rows,
// in one run: a static token on a gateway without OIDC (the baseline: the
// server checks tokens itself), a static token and an OIDC token (RS256)
// on a gateway with --oidc-issuer, where every token goes through the
// callout.
func BenchmarkFirstRequest(b *testing.B) {
	iss := oidctest.New(b)
	limit := func(o *gatewayOptions) { o.cfg.AuthFailureLimit = -1 }
	plain := startGateway(b, limit)
	callout := startGateway(b, withOIDC(b, iss), limit)
	publish := func(b *testing.B, g *gateway, tok string) {
		req := httptest.NewRequest("POST", "/v1/publish/orders.bench", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		w := httptest.NewRecorder()
		g.api.ServeHTTP(w, req)
		if w.Code != http.StatusNoContent {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
	for _, row := range []struct {
		name string
		g    *gateway
		oidc bool
	}{{"static", plain, false}, {"callout-static", callout, false}, {"callout-oidc", callout, true}} {
		token := func(i int) string {
			if row.oidc {
				return oidcOrders(b, iss, fmt.Sprint("bench-", i), time.Hour)
			}
			return ordersToken
		}
		b.Run(row.name+"/first", func(b *testing.B) {
			toks := make([]string, b.N)
			for i := range toks {
				toks[i] = token(i)
			}
			b.ResetTimer()
			for i := range b.N {
				publish(b, row.g, toks[i])
				b.StopTimer()
				row.g.pool.Forget(bridge.KeyOf(toks[i]))
				b.StartTimer()
			}
		})
		b.Run(row.name+"/repeat", func(b *testing.B) {
			tok := token(-1)
			publish(b, row.g, tok)
			b.ResetTimer()
			for range b.N {
				publish(b, row.g, tok)
			}
		})
	}
}

// TestOIDCRefusalsCountTowardsTheFailedAuthLimit: refused OIDC tokens are
// failed authentications like any other.
func TestOIDCRefusalsCountTowardsTheFailedAuthLimit(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	g := startGateway(t, withOIDC(t, iss), func(o *gatewayOptions) {
		o.cfg.AuthFailureLimit = 3
		o.cfg.AuthFailureWindow = time.Minute
	})
	for i := range 3 {
		tok := iss.Sign(t, "rsa-1", iss.Claims(fmt.Sprint("eve-", i), "another-app", time.Hour))
		resp, body := g.do("POST", "/v1/publish/orders.x", tok, nil)
		wantProblem(t, resp, body, 401, "")
	}
	resp, body := g.do("POST", "/v1/publish/orders.x", oidcOrders(t, iss, "alice", time.Hour), nil)
	wantProblem(t, resp, body, 429, "failed authentications")
}

// sendMayBeRefused sends a frame the gateway may refuse while it is still
// being written (one over the connect frame's bound: 1009, then a reset
// the writer can see first); what the test checks comes after.
func (w *wsClient) sendMayBeRefused(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = w.c.Write(ctx, websocket.MessageText, b)
}
