package web_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natsgate/natsgate"
	"github.com/natsgate/natsgate/bridge"
	"github.com/natsgate/natsgate/httpapi"
	"github.com/natsgate/natsgate/internal/gatewayproc"
	"github.com/natsgate/natsgate/internal/oidctest"
	"github.com/natsgate/natsgate/web"
)

// startOIDCGateway is a gateway accepting iss's tokens (audience aud),
// with JetStream, an expiring notice lead of notice, and POST /test/token
// on its origin minting a token allowed everything that lives ttl (for
// another audience with ?wrong-audience); minted counts them.
func startOIDCGateway(t *testing.T, iss *oidctest.Issuer, aud string, notice, ttl time.Duration, minted *atomic.Int32) (url, natsURL string) {
	t.Helper()
	v, err := bridge.NewOIDCVerifier(context.Background(), bridge.OIDCConfig{Issuer: iss.URL, Audience: aud})
	if err != nil {
		t.Fatal(err)
	}
	logs := &gatewayproc.LogBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	e, err := bridge.StartEmbedded(bridge.EmbeddedConfig{Listen: "127.0.0.1:0", Tokens: testTokens(), OIDC: v, Logger: logger,
		JetStream: true, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	pool := bridge.NewPool(bridge.Config{Logger: logger, Server: e})
	api := httpapi.NewServer(logger, pool, httpapi.Config{Assets: web.Assets, OpenAPI: natsgate.OpenAPI, WS: httpapi.WSConfig{ExpiryNotice: notice}})
	mux := http.NewServeMux()
	mux.HandleFunc("POST /test/token", func(w http.ResponseWriter, r *http.Request) {
		minted.Add(1)
		c := iss.Claims("page", aud, ttl)
		if r.URL.Query().Has("wrong-audience") {
			c["aud"] = "another-app"
		}
		c["nats"] = map[string]any{}
		_, _ = w.Write([]byte(iss.Sign(t, "rsa-1", c)))
	})
	mux.Handle("/", api)
	ts := httptest.NewServer(mux)
	t.Cleanup(func() {
		api.Shutdown()
		ts.Close()
		_ = pool.Close(context.Background())
		_ = e.Shutdown(context.Background())
		if t.Failed() {
			t.Logf("gateway log:\n%s", logs.String())
		}
	})
	return ts.URL, e.ClientURL()
}

// refreshPage is a page with the client loaded (and the wire spied on)
// from a gateway of startOIDCGateway's whose tokens live 2 s, with the
// expiring notice 1 s ahead, and a memory stream PAGE of page.js;
// minted counts the tokens the page fetched.
func refreshPage(t *testing.T) (b *browser, natsURL string, minted *atomic.Int32) {
	t.Helper()
	minted = new(atomic.Int32)
	base, natsURL := startOIDCGateway(t, oidctest.New(t), "natsgate-web", time.Second, 2*time.Second, minted)
	putStream(t, base, "PAGE", `{"subjects":["page.js"],"storage":"memory"}`)
	b = newBrowser(t)
	b.openAt(base)
	eval[bool](b, spyJS)
	b.loadClient()
	return b, natsURL, minted
}

// TestJSClientTokenFunctionKeepsSubscriptionsAcrossRefreshes: a page
// whose token is an async function (fetching a token living 2 s) is told
// ahead of each expiry, calls the function and moves its open session to
// the fresh token, three times, without a reconnect: its core
// subscription misses no message published meanwhile, and its JetStream
// subscription gets every seq once, in order.
func TestJSClientTokenFunctionKeepsSubscriptionsAcrossRefreshes(t *testing.T) {
	t.Parallel() // mostly waiting for tokens to expire: beside the other one
	b, natsURL, minted := refreshPage(t)
	eval[bool](b, `(async () => {
		window.nc = await mod.connect({ token: async () => (await fetch('/test/token', { method: 'POST' })).text() });
		window.events = [];
		for (const ev of ['refresh', 'error', 'disconnect', 'resuming']) {
			nc.on(ev, (d) => events.push(ev + ' ' + JSON.stringify(d, (k, v) => v instanceof Error ? v.message : v)));
		}
		window.core = [];
		await nc.subscribe('page.core', (m) => core.push(Number(m.data)));
		return true;
	})()`)
	sid := b.subscribeJS("page.js", `{ deliver: 'all' }`)

	nc, err := nats.Connect(natsURL, nats.Token(adminToken))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var (
		stop     = make(chan struct{})
		wg       sync.WaitGroup
		stored   int
		sent     int
		storeErr error
	)
	wg.Go(func() {
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, storeErr = js.Publish(ctx, "page.js", []byte(fmt.Sprint("m", i)))
			cancel()
			if storeErr == nil {
				storeErr = nc.Publish("page.core", []byte(strconv.Itoa(i)))
			}
			if storeErr != nil {
				return
			}
			stored, sent = i, i
		}
	})
	b.waitJS("three refreshes", `events.filter((e) => e.startsWith('refresh')).length >= 3`)
	close(stop)
	wg.Wait()
	if storeErr != nil {
		t.Fatal(storeErr)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	b.waitGot(stored)
	b.waitJS("the last core message", `core.includes(`+strconv.Itoa(sent)+`)`)
	events := eval[[]string](b, `events`)
	for _, ev := range events {
		if !strings.HasPrefix(ev, "refresh") {
			t.Errorf("event %s: a refresh should go unnoticed but for its 'refresh' event", ev)
		}
	}
	if got, want := b.gotSeqs(), seqRange(1, uint64(stored)); !slices.Equal(got, want) {
		t.Fatalf("JetStream seqs %v, want 1…%d once each, in order; events %v", got, stored, events)
	}
	checkResumes(t, b.wire(), sid, "all") // the one sub frame: no resubscription, no seq twice
	core := eval[[]int](b, `core`)
	seen := map[int]bool{}
	for _, n := range core {
		seen[n] = true
	}
	for n := core[0]; n <= sent; n++ {
		if !seen[n] {
			t.Fatalf("core message %d missing (got %d of %d..%d); events %v", n, len(seen), core[0], sent, events)
		}
	}
	connects := eval[int](b, `wire_.filter((x) => x.dir === 'out' && x.f.op === 'connect').length`)
	if connects < 4 || int(minted.Load()) != connects {
		t.Errorf("%d connect frames and %d tokens minted, want the first and one per refresh (at least 4), alike", connects, minted.Load())
	}
	if n := eval[int](b, `wire_.filter((x) => x.dir === 'out' && x.f.op === 'sub').length`); n != 2 {
		t.Errorf("%d sub frames, want 2: the refreshes keep the subscriptions", n)
	}
	t.Logf("%d stored and %d core messages across %d refreshes", stored, len(core), connects-1)
}

// TestJSClientFailedRefreshGoesOnThenReconnects: a refresh whose token
// the gateway refuses is an 'error' event (status 401, refresh true) and
// the session goes on; at the old token's expiry (close 4401 "token
// expired") the client reconnects with a fresh token from the function,
// and its JetStream subscription resumes by seq, losing nothing.
func TestJSClientFailedRefreshGoesOnThenReconnects(t *testing.T) {
	t.Parallel()
	b, natsURL, minted := refreshPage(t)
	eval[bool](b, `(async () => {
		let calls = 0;
		const token = async () => (await fetch('/test/token' + (++calls === 2 ? '?wrong-audience' : ''), { method: 'POST' })).text();
		window.nc = await mod.connect({ token, reconnectDelay: 100 });
		window.events = [];
		nc.on('error', (d) => events.push('error ' + d.error.status + ' ' + d.error.refresh));
		nc.on('connect', (d) => events.push('connect ' + d.reconnected));
		nc.on('disconnect', (d) => events.push('disconnect ' + d.code + ' ' + d.reason));
		nc.on('refresh', () => events.push('refresh'));
		return true;
	})()`)
	sid := b.subscribeJS("page.js", `{ deliver: 'all' }`)
	seqs := storeNative(t, natsURL, "page.js", "a", "b")
	b.waitGot(2)
	b.waitJS("the refused refresh", `events.includes('error 401 true')`)
	if got := eval[string](b, `nc.ping().then(() => nc.state)`); got != "connected" {
		t.Fatalf("after a refused refresh the client is %s, want connected", got)
	}
	b.waitJS("the reconnect after the expiry", `events.includes('connect true')`)
	seqs = append(seqs, storeNative(t, natsURL, "page.js", "c")...)
	b.waitGot(3)
	// The fresh session's own refreshes may follow.
	events := eval[[]string](b, `events`)
	if want := []string{"error 401 true", "disconnect 4401 token expired", "connect true"}; len(events) < 3 || !slices.Equal(events[:3], want) {
		t.Errorf("events %v, want %v first", events, want)
	}
	if got := b.gotSeqs(); !slices.Equal(got, seqs) {
		t.Fatalf("seqs %v, want %v", got, seqs)
	}
	if resumes := checkResumes(t, b.wire(), sid, "all"); !slices.Equal(resumes, []uint64{3}) {
		t.Errorf("resubscribed from %v, want [3]", resumes)
	}
	if minted.Load() < 3 {
		t.Errorf("%d tokens minted, want at least 3: connect, the refused refresh, the reconnect", minted.Load())
	}
}
