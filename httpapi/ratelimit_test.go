package httpapi

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/natsgate/natsgate/bridge"
)

// TestSimultaneousBadTokensCannotOutrunTheFailureLimit: attempts in flight
// count against an address's limit, so a burst of bad tokens sent at once
// reaches NATS at most limit times, as the NATS server's own log of
// authentication errors shows.
func TestSimultaneousBadTokensCannotOutrunTheFailureLimit(t *testing.T) {
	t.Parallel()
	const limit, burst = 5, 100
	g := startGateway(t, func(o *gatewayOptions) { o.cfg.AuthFailureLimit = limit })
	start := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	for i := range burst {
		wg.Go(func() {
			<-start
			resp, _ := g.do("POST", "/v1/publish/x", fmt.Sprintf("bad-token-%d", i), nil)
			mu.Lock()
			statuses[resp.StatusCode]++
			mu.Unlock()
		})
	}
	close(start)
	wg.Wait()
	reached := strings.Count(g.logs.String(), "authentication error")
	if reached > limit || statuses[401] > limit || statuses[401]+statuses[429] != burst {
		t.Fatalf("%d simultaneous bad tokens at a limit of %d: %d reached NATS, answers %v", burst, limit, reached, statuses)
	}
	t.Logf("%d reached NATS; answers %v", reached, statuses)
}

// TestSimultaneousFirstRequestsOfAGoodTokenAreNotLimited: attempts with
// the same token share one place under the limit (the pool makes them one
// connection attempt), so a burst of a good token's first requests is not
// refused for being in flight.
func TestSimultaneousFirstRequestsOfAGoodTokenAreNotLimited(t *testing.T) {
	t.Parallel()
	g := startGateway(t, func(o *gatewayOptions) { o.cfg.AuthFailureLimit = 2 })
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range 30 {
		wg.Go(func() {
			<-start
			if resp, body := g.do("POST", "/v1/publish/x", adminToken, nil); resp.StatusCode != 204 {
				t.Errorf("good token in a burst: %d %s", resp.StatusCode, body)
			}
		})
	}
	close(start)
	wg.Wait()
}

// TestManyUsersBehindOneAddressAreSpreadOutNotRefused: behind a NAT or a
// proxy, many users whose tokens are good connect at once from one
// address. The places their attempts hold under the failure limit are
// given back as each succeeds, and an attempt that finds none free waits
// for one: every user gets in. Bad tokens in the same burst are still
// counted, and still bounded by the limit.
func TestManyUsersBehindOneAddressAreSpreadOutNotRefused(t *testing.T) {
	t.Parallel()
	const limit, users, bad = 3, 60, 2
	toks := testTokens()
	for i := range users {
		toks = append(toks, bridge.Token{Name: fmt.Sprint("user", i), Token: fmt.Sprintf("user-%d-Tok3n-SECRET", i)})
	}
	g := startGateway(t, func(o *gatewayOptions) { o.cfg.AuthFailureLimit, o.tokens = limit, toks })
	start := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[string]map[int]int{"good": {}, "bad": {}}
	for i := range users + bad {
		wg.Go(func() {
			kind, tok := "good", fmt.Sprintf("user-%d-Tok3n-SECRET", i)
			if i >= users {
				kind, tok = "bad", fmt.Sprint("bad-token-", i)
			}
			<-start
			resp, _ := g.do("POST", "/v1/publish/x", tok, nil)
			mu.Lock()
			statuses[kind][resp.StatusCode]++
			mu.Unlock()
		})
	}
	close(start)
	wg.Wait()
	if statuses["good"][204] != users || statuses["bad"][401] != bad {
		t.Fatalf("%d good and %d bad tokens at once from one address, limit %d: answers %v", users, bad, limit, statuses)
	}
	// The failures were counted: one more brings the address to its limit.
	resp, body := g.do("POST", "/v1/publish/x", "bad-one-more", nil)
	wantProblem(t, resp, body, 401, "rejected")
	resp, body = g.do("POST", "/v1/publish/x", "bad-past-the-limit", nil)
	wantProblem(t, resp, body, 429, "failed authentications")
}

// serveFrom runs one request through the gateway's handler as if it came
// from remote.
func (g *gateway) serveFrom(remote, path, token string) int {
	req := httptest.NewRequest("POST", path, nil)
	req.RemoteAddr = remote
	req.Header.Set("Authorization", "Bearer "+token)
	rec := httptest.NewRecorder()
	g.api.ServeHTTP(rec, req)
	return rec.Code
}

// TestFailureLimitKeysIPv6By64: an IPv6 client's budget is its /64 (an
// attacker's /64 holds 2^64 addresses); IPv4 is per address, IPv4-mapped
// IPv6 counts as IPv4.
func TestFailureLimitKeysIPv6By64(t *testing.T) {
	t.Parallel()
	const limit = 3
	g := startGateway(t, func(o *gatewayOptions) { o.cfg.AuthFailureLimit = limit })
	for _, tc := range []struct {
		name      string
		failFrom  []string // limit addresses that fail
		refused   []string // then limited, good token or not
		unlimited string   // a neighbour that is not
	}{
		{"ipv6 /64", []string{"[2001:db8:1:2::1]:1000", "[2001:db8:1:2::2]:1000", "[2001:db8:1:2:ffff::3]:1001"},
			[]string{"[2001:db8:1:2:abcd::9]:2000", "[2001:db8:1:2::1%eth0]:3000"}, "[2001:db8:1:3::1]:1000"},
		{"ipv4", []string{"192.0.2.7:1", "192.0.2.7:2", "[::ffff:192.0.2.7]:3"},
			[]string{"192.0.2.7:4", "[::ffff:c000:207]:5"}, "192.0.2.8:1"},
	} {
		for i, remote := range tc.failFrom {
			if code := g.serveFrom(remote, "/v1/publish/x", fmt.Sprintf("bad-%s-%d", tc.name, i)); code != 401 {
				t.Fatalf("%s: failure %d from %s: %d, want 401", tc.name, i, remote, code)
			}
		}
		for _, remote := range tc.refused {
			if code := g.serveFrom(remote, "/v1/publish/x", "bad-again"); code != 429 {
				t.Fatalf("%s: %s after %d failures from its neighbours: %d, want 429", tc.name, remote, limit, code)
			}
		}
		if code := g.serveFrom(tc.unlimited, "/v1/publish/x", "bad-elsewhere"); code != 401 {
			t.Fatalf("%s: %s, outside the limited client: %d, want 401", tc.name, tc.unlimited, code)
		}
	}
}

// TestHeldTokenPassesWhileItsAddressIsLimited: behind a NAT, someone
// else's failures from the same address do not lock out a token whose
// connection the gateway already holds; a token not yet connected waits.
func TestHeldTokenPassesWhileItsAddressIsLimited(t *testing.T) {
	t.Parallel()
	g := startGateway(t, func(o *gatewayOptions) { o.cfg.AuthFailureLimit = 3 })
	if resp, _ := g.do("POST", "/v1/publish/x", adminToken, nil); resp.StatusCode != 204 {
		t.Fatalf("admin: %d", resp.StatusCode)
	}
	for i := range 3 {
		resp, body := g.do("POST", "/v1/publish/x", fmt.Sprintf("bad-%d", i), nil)
		wantProblem(t, resp, body, 401, "rejected")
	}
	resp, body := g.do("POST", "/v1/publish/x", "bad-more", nil)
	wantProblem(t, resp, body, 429, "failed authentications")
	resp, body = g.do("POST", "/v1/publish/orders.x", ordersToken, nil)
	wantProblem(t, resp, body, 429, "failed authentications")
	// admin's connection is held: HTTP, streams and both WebSocket
	// authentications pass.
	if resp, body := g.do("POST", "/v1/publish/x", adminToken, nil); resp.StatusCode != 204 {
		t.Fatalf("held token while its address is limited: %d %s", resp.StatusCode, body)
	}
	s := g.stream("/v1/subscribe/x", adminToken, "")
	s.next(t, func(l string) bool { return l == ": subscribed" })
	g.dialWS(adminToken).next("connected")
	w := g.dialWS("")
	w.send(map[string]any{"op": "connect", "token": adminToken})
	w.next("connected")
}

// fail counts n failed authentications from remote.
func fail(t *testing.T, l *failureLimiter, remote string, n int) {
	t.Helper()
	for i := range n {
		done, err := l.begin(context.Background(), remote, bridge.KeyOf(fmt.Sprint("bad", i)))
		if err != nil {
			t.Fatalf("failure %d from %s refused: %v", i, remote, err)
		}
		done(true)
	}
}

// TestFullFailureTableForgetsTheOldestNotEveryone: when the table is full,
// a new client evicts the oldest window only; the clients limited so far
// stay limited.
func TestFullFailureTableForgetsTheOldestNotEveryone(t *testing.T) {
	t.Parallel()
	const limit = 1
	l := newFailureLimiter(limit, time.Minute)
	addr := func(i int) string { return fmt.Sprintf("10.%d.%d.%d:1", i>>16&0xff, i>>8&0xff, i&0xff) }
	for i := range maxTrackedClients {
		fail(t, l, addr(i), limit)
	}
	fail(t, l, "192.0.2.1:1", 1) // the table is full
	if n := l.size(); n > maxTrackedClients {
		t.Fatalf("%d clients tracked, bound %d", n, maxTrackedClients)
	}
	for _, i := range []int{1, maxTrackedClients / 2, maxTrackedClients - 1} {
		if _, err := l.begin(context.Background(), addr(i), bridge.KeyOf("another")); err == nil {
			t.Fatalf("client %d of %d was forgotten when one more came: its failures no longer count", i, maxTrackedClients)
		}
	}
	// A window that ends frees its client.
	l2 := newFailureLimiter(limit, 50*time.Millisecond)
	fail(t, l2, "192.0.2.2:1", limit)
	time.Sleep(60 * time.Millisecond)
	fail(t, l2, "192.0.2.2:1", 1)
}
