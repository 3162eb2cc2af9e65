package httpapi

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natsgate/natsgate/bridge"
	"github.com/natsgate/natsgate/internal/oidctest"
)

// oidcAll is a valid token allowed everything (JetStream's API too).
func oidcAll(t testing.TB, iss *oidctest.Issuer, sub string, ttl time.Duration) string {
	c := iss.Claims(sub, oidcAudience, ttl)
	c["nats"] = map[string]any{}
	return iss.Sign(t, "ec-1", c)
}

// sessionsOf is how many WebSocket sessions the gateway counts for tok.
func (g *gateway) sessionsOf(tok string) int {
	sc := g.api.sessions
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.n[bridge.KeyOf(tok)]
}

// expiresAt is when a token made now with ttl expires (exp is in whole
// seconds).
func expiresAt(ttl time.Duration) time.Time { return time.Unix(time.Now().Add(ttl).Unix(), 0) }

// frameCollector reads a session's frames on the test's goroutine: each
// msg/kv frame goes to onData, every other one is returned.
type frameCollector struct {
	w      *wsClient
	onData func(f map[string]any)
}

// until reads frames until want returns true, asked after each frame
// (data frames once onData has them) and every 10 ms (with a nil
// frame); it fails on an error frame want does not take, or a close.
func (fc frameCollector) until(what string, want func(f map[string]any) bool) map[string]any {
	t := fc.w.t
	t.Helper()
	timeout := time.After(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case f, ok := <-fc.w.frames:
			if !ok {
				t.Fatalf("session closed waiting for %s: %v", what, <-fc.w.done)
			}
			if f["op"] == "msg" || f["op"] == "kv" {
				fc.onData(f)
			}
			switch {
			case want(f):
				return f
			case f["op"] == "error":
				t.Fatalf("error frame waiting for %s: %v", what, f)
			}
		case <-tick.C:
			if want(nil) {
				return nil
			}
		case <-timeout:
			t.Fatalf("no %s within 10s", what)
		}
	}
}

func isOp(op, id string) func(map[string]any) bool {
	return func(f map[string]any) bool { return f["op"] == op && (id == "" || f["id"] == id || f["sid"] == id) }
}

// TestOIDCSessionsEndWhenTheTokenExpires: a session is warned ahead of its
// token's expiry ({"op":"status","auth":"expiring"} with the time left),
// then, unrefreshed, NATS disconnects the token's connection at its exp:
// WebSocket sessions close with 4401 "token expired", SSE and NDJSON
// streams end with {"op":"status","auth":"expired"}, and the token is a
// 401 from then on.
func TestOIDCSessionsEndWhenTheTokenExpires(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	g := startGateway(t, withOIDC(t, iss), func(o *gatewayOptions) {
		o.pool.ReconnectWait = 100 * time.Millisecond
		o.cfg.WS.ExpiryNotice = time.Second
	})
	exp := expiresAt(2 * time.Second)
	tok := oidcOrders(t, iss, "short-lived", 2*time.Second)
	w := g.dialWS(tok)
	w.next("connected")
	sse := g.stream("/v1/subscribe/orders.>", tok, "")
	nd := g.stream("/v1/subscribe/orders.>", tok, "application/x-ndjson")
	for _, s := range []*sseStream{sse, nd} {
		if s.resp.StatusCode != 200 {
			t.Fatalf("stream: %d", s.resp.StatusCode)
		}
	}
	notice := w.next("status")
	for notice["auth"] == nil {
		notice = w.next("status")
	}
	left, _ := notice["expires_in_ms"].(float64)
	if notice["auth"] != "expiring" || left <= 0 || left > 1100 {
		t.Fatalf("notice %v, want auth expiring with expires_in_ms in (0, 1100]", notice)
	}
	if d := time.Until(exp); d < 500*time.Millisecond {
		t.Fatalf("the expiring notice came %v before the token's exp, want about 1s", d)
	}
	if code, reason := w.closedWith(); code != closeUnauthorized || reason != "token expired" {
		t.Fatalf("WebSocket at expiry: %d %q, want %d \"token expired\"", code, reason, closeUnauthorized)
	}
	for _, tc := range []struct {
		s          *sseStream
		want, name string
	}{{sse, `data: {"op":"status","auth":"expired"}`, "SSE"}, {nd, `{"op":"status","auth":"expired"}`, "NDJSON"}} {
		ended := make(chan [2]string)
		go func() {
			var prev, last string
			for l := range tc.s.lines {
				if l != "" {
					prev, last = last, l
				}
			}
			ended <- [2]string{prev, last}
		}()
		select {
		case got := <-ended:
			if got[1] != tc.want {
				t.Fatalf("the %s stream ended with %q, want %q", tc.name, got[1], tc.want)
			}
			if tc.name == "SSE" && got[0] != "event: status" {
				t.Fatalf("the SSE stream's last event is %q %q, want event: status", got[0], got[1])
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("the %s stream outlived its token", tc.name)
		}
	}
	resp, body := g.do("POST", "/v1/publish/orders.late", tok, nil)
	wantProblem(t, resp, body, 401, "")
}

// closedWith waits for the session to end and returns its close code and
// reason.
func (w *wsClient) closedWith() (websocket.StatusCode, string) {
	w.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-w.frames:
			if !ok {
				var ce websocket.CloseError
				if err := <-w.done; !errors.As(err, &ce) {
					return -1, err.Error()
				}
				return ce.Code, ce.Reason
			}
		case <-timeout:
			w.t.Fatal("session not closed within 10s")
		}
	}
}

// publishing calls publish(1), publish(2), … every 2 ms until the stop it
// returns is called; stop returns the last i whose publish succeeded. An
// error fails the test and ends the publishing.
func publishing(t *testing.T, publish func(i int) error) (stop func() int) {
	quit, done := make(chan struct{}), make(chan struct{})
	last := 0
	go func() {
		defer close(done)
		for i := 1; ; i++ {
			select {
			case <-quit:
				return
			case <-time.After(2 * time.Millisecond):
			}
			if err := publish(i); err != nil {
				t.Error(err)
				return
			}
			last = i
		}
	}()
	return func() int {
		close(quit)
		<-done
		return last
	}
}

// TestOIDCRefreshKeepsCoreSubscriptions: a connect frame with a fresh
// token moves the session to the fresh token's connection; a core
// subscription loses nothing published before, during or after the
// switch (while a publish from the session itself is under way), the
// session outlives the old token, and the per-token session counts move
// with it.
func TestOIDCRefreshKeepsCoreSubscriptions(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	g := startGateway(t, withOIDC(t, iss))
	oldExp := expiresAt(2 * time.Second)
	old := oidcOrders(t, iss, "alice", 2*time.Second)
	fresh := oidcOrders(t, iss, "alice", time.Hour)
	w := g.dialWS("")
	w.send(map[string]any{"op": "connect", "token": old})
	w.next("connected")
	w.send(map[string]any{"op": "sub", "sid": "c", "subject": "orders.core"})
	w.next("ok")

	nc := g.native(adminToken)
	stop := publishing(t, func(i int) error {
		if err := nc.Publish("orders.core", []byte(strconv.Itoa(i))); err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		return nil
	})
	got := map[int]int{}
	fromSession := 0
	fc := frameCollector{w: w, onData: func(f map[string]any) {
		if f["data"] == "from the session" {
			fromSession++
			return
		}
		n, err := strconv.Atoi(fmt.Sprint(f["data"]))
		if err != nil {
			t.Fatalf("message %v", f)
		}
		got[n]++
	}}
	fc.until("20 messages", func(map[string]any) bool { return len(got) >= 20 })
	w.send(map[string]any{"op": "connect", "token": fresh, "id": "r1"})
	w.send(map[string]any{"op": "pub", "subject": "orders.core", "data": "from the session", "id": "p1"})
	connected := fc.until("the refresh's connected frame", isOp("connected", "r1"))
	if connected["max_payload"] == nil || connected["nats"] != "connected" {
		t.Errorf("connected frame %v", connected)
	}
	fc.until("the publish's ok", isOp("ok", "p1"))
	if a, b := g.sessionsOf(old), g.sessionsOf(fresh); a != 0 || b != 1 {
		t.Errorf("sessions counted: old token %d, fresh token %d; want 0 and 1", a, b)
	}
	// Past the old token's expiry: the session goes on.
	fc.until("the old token's expiry", func(map[string]any) bool { return time.Now().After(oldExp.Add(500 * time.Millisecond)) })
	last := stop()
	fc.until("the last message", func(map[string]any) bool { return got[last] > 0 })
	first := last
	for n := range got {
		first = min(first, n)
	}
	var missing []int
	for n := first; n <= last; n++ {
		if got[n] == 0 {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("messages %d..%d: %d missing across the refresh: %v", first, last, len(missing), missing)
	}
	if fromSession != 1 {
		t.Errorf("the session's own publish came %d times, want once", fromSession)
	}
	t.Logf("%d messages over %v, the refresh among them", last-first+1, time.Since(oldExp.Add(-2*time.Second)).Round(time.Millisecond))
}

// TestOIDCRefreshResumesJetStreamWithoutGapOrDuplicate: across two
// refreshes in a row, with messages and key-value entries stored all the
// while, a JetStream subscription gets every seq once, in order, and a
// watch every revision once; the session outlives the first token, and
// no consumer is left behind.
func TestOIDCRefreshResumesJetStreamWithoutGapOrDuplicate(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	g := startGateway(t, withOIDC(t, iss), withJetStream)
	js := g.jsAdmin()
	ctx := context.Background()
	st := mkStream(t, js, jetstream.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.>"}})
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "cfg"})
	if err != nil {
		t.Fatal(err)
	}
	firstExp := expiresAt(2 * time.Second)
	toks := []string{oidcAll(t, iss, "bob", 2*time.Second), oidcAll(t, iss, "bob", time.Hour), oidcAll(t, iss, "bob", time.Hour)}
	w := g.dialWS(toks[0])
	w.next("connected")
	w.send(map[string]any{"op": "sub", "sid": "j", "subject": "orders.js", "deliver": "all"})
	w.next("ok")
	w.send(map[string]any{"op": "watch", "sid": "k", "bucket": "cfg"})
	w.next("ok")

	stop := publishing(t, func(i int) error {
		if _, err := js.Publish(ctx, "orders.js", []byte(strconv.Itoa(i))); err != nil {
			return fmt.Errorf("stored publish: %w", err)
		}
		if i%2 == 0 {
			if _, err := kv.Put(ctx, fmt.Sprint("key.", i%5), []byte(strconv.Itoa(i))); err != nil {
				return fmt.Errorf("kv put: %w", err)
			}
		}
		return nil
	})
	var seqs, revisions []int
	fc := frameCollector{w: w, onData: func(f map[string]any) {
		switch f["sid"] {
		case "j":
			seqs = append(seqs, int(f["seq"].(float64)))
		case "k":
			revisions = append(revisions, int(f["revision"].(float64)))
		}
	}}
	fc.until("20 stored messages", func(map[string]any) bool { return len(seqs) >= 20 })
	w.send(map[string]any{"op": "connect", "token": toks[1], "id": "r1"})
	w.send(map[string]any{"op": "connect", "token": toks[2], "id": "r2"})
	fc.until("the first refresh", isOp("connected", "r1"))
	fc.until("the second refresh", isOp("connected", "r2"))
	for _, tok := range toks[:2] {
		if n := g.sessionsOf(tok); n != 0 {
			t.Errorf("a token moved away from still counts %d sessions", n)
		}
	}
	fc.until("the first token's expiry", func(map[string]any) bool { return time.Now().After(firstExp.Add(300 * time.Millisecond)) })
	stored := stop()
	revs := stored / 2
	fc.until("every stored message and entry", func(map[string]any) bool { return len(seqs) >= stored && len(revisions) >= revs })
	for i, s := range seqs {
		if s != i+1 {
			t.Fatalf("seq %d at position %d of %v: a gap or a duplicate across the refreshes", s, i, seqs)
		}
	}
	for i := 1; i < len(revisions); i++ {
		if revisions[i] <= revisions[i-1] {
			t.Fatalf("revisions %v: %d after %d", revisions, revisions[i], revisions[i-1])
		}
	}
	if len(seqs) != stored || len(revisions) != revs {
		t.Fatalf("got %d messages and %d entries, stored %d and %d", len(seqs), len(revisions), stored, revs)
	}
	w.c.CloseNow()
	waitNoConsumers(t, st)
	kvs, err := js.Stream(ctx, "KV_cfg")
	if err != nil {
		t.Fatal(err)
	}
	waitNoConsumers(t, kvs)
}

// TestOIDCRefreshRefusedKeepsTheSession: a refresh NATS rejects is an
// error frame 401 and one whose token may not keep a subscription an
// error frame 403; either way the session goes on with the old token.
// A refresh with the same token is harmless, and a session authenticated
// by header refreshes too.
func TestOIDCRefreshRefusedKeepsTheSession(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	g := startGateway(t, withOIDC(t, iss), func(o *gatewayOptions) { o.cfg.AuthFailureLimit = -1 })
	tok := oidcOrders(t, iss, "carol", time.Hour)
	w := g.dialWS(tok)
	w.next("connected")
	w.send(map[string]any{"op": "sub", "sid": "s", "subject": "orders.x"})
	w.next("ok")
	nc := g.native(adminToken)
	delivered := func(data string) {
		t.Helper()
		if err := nc.Publish("orders.x", []byte(data)); err != nil {
			t.Fatal(err)
		}
		if f := w.next("msg"); f["data"] != data {
			t.Fatalf("message %v, want %q", f, data)
		}
	}
	wrongAud := iss.Sign(t, "rsa-1", iss.Claims("carol", "another-app", time.Hour))
	c := iss.Claims("carol", oidcAudience, time.Hour)
	c["nats"] = map[string]any{"subscribe": map[string]any{"allow": []string{"billing.>"}}}
	narrower := iss.Sign(t, "rsa-1", c)
	for _, tc := range []struct {
		name, token string
		status      float64
	}{{"rejected", wrongAud, 401}, {"forbidden a subscription", narrower, 403}, {"empty", "", 401}} {
		w.send(map[string]any{"op": "connect", "token": tc.token, "id": "r"})
		f := w.next("error")
		if f["status"] != tc.status || f["id"] != "r" {
			t.Fatalf("%s refresh: %v, want an error frame %v with id r", tc.name, f, tc.status)
		}
		delivered(tc.name)
		if n := g.sessionsOf(tok); n != 1 {
			t.Fatalf("after the %s refresh the token counts %d sessions, want 1", tc.name, n)
		}
	}
	if n := g.sessionsOf(narrower); n != 0 {
		t.Errorf("the refused token counts %d sessions", n)
	}
	w.send(map[string]any{"op": "connect", "token": tok, "id": "same"})
	if f := w.next("connected"); f["id"] != "same" {
		t.Fatalf("same-token refresh: %v", f)
	}
	delivered("after the same token")
	fresh := oidcOrders(t, iss, "carol", 2*time.Hour)
	w.send(map[string]any{"op": "connect", "token": fresh, "id": "fresh"})
	if f := w.next("connected"); f["id"] != "fresh" {
		t.Fatalf("refresh of a header-authenticated session: %v", f)
	}
	delivered("after the fresh token")
	if a, b := g.sessionsOf(tok), g.sessionsOf(fresh); a != 0 || b != 1 {
		t.Errorf("sessions counted: old token %d, fresh token %d; want 0 and 1", a, b)
	}
	if strings.Contains(g.logs.String(), fresh[len(fresh)-16:]) {
		t.Error("the fresh token is in the logs")
	}
}

// TestOIDCRefreshRespectsTheFreshTokensSessionBound: the fresh token's
// bound on sessions applies to a session moving to it.
func TestOIDCRefreshRespectsTheFreshTokensSessionBound(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	g := startGateway(t, withOIDC(t, iss), func(o *gatewayOptions) { o.cfg.WS.MaxSessionsPerToken = 1 })
	a, b := oidcOrders(t, iss, "dave", time.Hour), oidcOrders(t, iss, "dave", 2*time.Hour)
	g.dialWS(b).next("connected")
	w := g.dialWS(a)
	w.next("connected")
	w.send(map[string]any{"op": "connect", "token": b, "id": "r"})
	if f := w.next("error"); f["status"] != float64(429) {
		t.Fatalf("refresh to a token at its bound: %v, want 429", f)
	}
	if n := g.sessionsOf(a); n != 1 {
		t.Fatalf("the old token counts %d sessions, want 1", n)
	}
	w.send(map[string]any{"op": "ping"})
	w.next("pong")
}

// TestOIDCRefreshThenUnsubOrCloseLeavesNothing: an unsub right behind a
// refresh ends the moved subscription; a session closed while its
// refresh is under way leaves no consumer, no session count and no
// goroutine behind (goleak, at the package's end).
func TestOIDCRefreshThenUnsubOrCloseLeavesNothing(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	g := startGateway(t, withOIDC(t, iss), withJetStream)
	js := g.jsAdmin()
	st := mkStream(t, js, jetstream.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.>"}})
	store(t, js, "orders.js", 1, 3, 8)
	toks := []string{oidcAll(t, iss, "erin", time.Hour), oidcAll(t, iss, "erin", 2*time.Hour), oidcAll(t, iss, "erin", 3*time.Hour)}

	w := g.dialWS(toks[0])
	w.next("connected")
	w.send(map[string]any{"op": "sub", "sid": "j", "subject": "orders.js", "deliver": "all"})
	w.next("ok")
	fc := frameCollector{w: w, onData: func(map[string]any) {}}
	w.send(map[string]any{"op": "sub", "sid": "c", "subject": "orders.core", "id": "sc"})
	fc.until("the core sub's ok", isOp("ok", "sc"))
	w.send(map[string]any{"op": "connect", "token": toks[1], "id": "r"})
	w.send(map[string]any{"op": "unsub", "sid": "j"})
	w.send(map[string]any{"op": "unsub", "sid": "c"})
	fc.until("the refresh", isOp("connected", "r"))
	fc.until("the JetStream unsub's ok", isOp("ok", "j"))
	fc.until("the core unsub's ok", isOp("ok", "c"))
	store(t, js, "orders.js", 4, 4, 8)
	g.native(adminToken).Publish("orders.core", []byte("late"))
	fc.onData = func(f map[string]any) {
		if f["sid"] == "c" || f["seq"] == float64(4) {
			t.Errorf("a message after the unsub: %v", f)
		}
	}
	w.send(map[string]any{"op": "ping"})
	fc.until("pong", isOp("pong", ""))
	waitNoConsumers(t, st)

	w2 := g.dialWS(toks[0])
	w2.next("connected")
	w2.send(map[string]any{"op": "sub", "sid": "j", "subject": "orders.js", "deliver": "all"})
	w2.next("ok")
	w2.send(map[string]any{"op": "connect", "token": toks[2], "id": "r"})
	w2.c.CloseNow()
	waitNoConsumers(t, st)
	waitFor(t, "the closed session's counts to go", func() bool { return g.sessionsOf(toks[0]) == 0 && g.sessionsOf(toks[2]) == 0 })
}
