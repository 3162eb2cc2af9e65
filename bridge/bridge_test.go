package bridge

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/crypto/bcrypt"
)

// Tokens used across the bridge tests: "admin" may do anything; "orders"
// may publish and subscribe under orders.> only (and receive replies).
const (
	adminToken  = "admin-secret-token"
	ordersToken = "orders-secret-token"
)

func testTokens() []Token {
	return []Token{
		{Name: "admin", Token: adminToken},
		{Name: "orders", Token: ordersToken,
			Publish:   &SubjectPermission{Allow: []string{"orders.>"}, Deny: []string{"orders.secret"}},
			Subscribe: &SubjectPermission{Allow: []string{"orders.>", "_INBOX.>"}}},
	}
}

// startEmbedded starts an embedded server on a random loopback port.
func startEmbedded(t testing.TB, tokens []Token) *Embedded {
	t.Helper()
	e, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", Tokens: tokens})
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	t.Cleanup(func() { _ = e.Shutdown(context.Background()) })
	return e
}

func newTestPool(t testing.TB, cfg Config) *Pool {
	t.Helper()
	p := NewPool(cfg)
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	return p
}

func mustAcquire(t testing.TB, p *Pool, token string) *Conn {
	t.Helper()
	c, err := p.Acquire(context.Background(), token)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	t.Cleanup(c.Release)
	return c
}

// native connects a plain nats.go client over TCP.
func native(t testing.TB, e *Embedded, token string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(e.ClientURL(), nats.Token(token))
	if err != nil {
		t.Fatalf("native connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func TestWrongTokenIsFast401OnEveryTransport(t *testing.T) {
	t.Parallel()
	e := startEmbedded(t, testTokens())
	for name, cfg := range map[string]Config{
		"in-process": {Server: e},
		"tcp":        {URL: e.ClientURL()},
	} {
		t.Run(name, func(t *testing.T) {
			p := newTestPool(t, cfg)
			start := time.Now()
			_, err := p.Acquire(context.Background(), "wrong")
			if !errors.Is(err, ErrUnauthorized) {
				t.Fatalf("Acquire(wrong) = %v, want ErrUnauthorized", err)
			}
			// A rejection takes milliseconds; the in-process trap takes 10 s.
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("rejection took %v; the server's answer was not seen", d)
			}
			c := mustAcquire(t, p, adminToken)
			if !c.Connected() {
				t.Fatal("good token's connection is not connected")
			}
		})
	}
}

func TestRejectedTokenIsRememberedNotRetried(t *testing.T) {
	t.Parallel()
	e := startEmbedded(t, testTokens())
	p := newTestPool(t, Config{Server: e, RejectTTL: time.Minute})
	if _, err := p.Acquire(context.Background(), "wrong"); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("first: %v", err)
	}
	varz, _ := e.s.Varz(nil)
	before := varz.TotalConnections
	for range 200 {
		if _, err := p.Acquire(context.Background(), "wrong"); !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("repeat: %v", err)
		}
	}
	// Every repeat was answered from memory: the server saw no attempt.
	if varz, _ := e.s.Varz(nil); varz.TotalConnections != before {
		t.Fatalf("server connection attempts went from %d to %d", before, varz.TotalConnections)
	}
}

func TestOneConnectionPerTokenSharedByConcurrentUsers(t *testing.T) {
	t.Parallel()
	e := startEmbedded(t, testTokens())
	p := newTestPool(t, Config{Server: e})
	var wg sync.WaitGroup
	conns := make([]*Conn, 50)
	for i := range conns {
		wg.Go(func() {
			c, err := p.Acquire(context.Background(), adminToken)
			if err != nil {
				t.Errorf("Acquire: %v", err)
				return
			}
			conns[i] = c
		})
	}
	wg.Wait()
	for _, c := range conns[1:] {
		if c != conns[0] {
			t.Fatal("concurrent acquirers of one token got different connections")
		}
	}
	other := mustAcquire(t, p, ordersToken)
	if other == conns[0] {
		t.Fatal("another token got the same connection")
	}
	if got := p.Stats(); got.Conns != 2 || got.InUse != 2 {
		t.Fatalf("Stats = %+v, want 2 held, 2 in use", got)
	}
	for _, c := range conns {
		c.Release()
	}
	if got := p.Stats(); got.InUse != 1 {
		t.Fatalf("after release InUse = %d, want 1", got.InUse)
	}
}

func TestIdleConnectionsAreClosed(t *testing.T) {
	t.Parallel()
	e := startEmbedded(t, testTokens())
	p := newTestPool(t, Config{Server: e, IdleTimeout: 200 * time.Millisecond})
	c, err := p.Acquire(context.Background(), adminToken)
	if err != nil {
		t.Fatal(err)
	}
	c.Release()
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("idle connection still open after 5s")
	}
	if got := p.Stats().Conns; got != 0 {
		t.Fatalf("pool holds %d connections, want 0", got)
	}
	c2 := mustAcquire(t, p, adminToken)
	if c2 == c || !c2.Connected() {
		t.Fatal("reacquire after idle close did not reconnect")
	}
}

func TestMaxTokensEvictsIdleThenRefuses(t *testing.T) {
	t.Parallel()
	e := startEmbedded(t, testTokens())
	p := newTestPool(t, Config{Server: e, MaxTokens: 1})
	a, err := p.Acquire(context.Background(), adminToken)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Acquire(context.Background(), ordersToken); !errors.Is(err, ErrTooManyTokens) {
		t.Fatalf("second token while first in use: %v, want ErrTooManyTokens", err)
	}
	a.Release()
	o := mustAcquire(t, p, ordersToken)
	if !o.Connected() {
		t.Fatal("second token not connected after the first went idle")
	}
	<-a.Done() // the idle one was evicted
}

func TestPublishConfirmedAfterServerHasIt(t *testing.T) {
	t.Parallel()
	e := startEmbedded(t, testTokens())
	p := newTestPool(t, Config{Server: e})
	nc := native(t, e, adminToken)
	sub, err := nc.SubscribeSync("greet")
	if err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	c := mustAcquire(t, p, adminToken)
	m := &Msg{Subject: "greet", Header: map[string][]string{"Trace": {"1"}}, Data: []byte("hi")}
	if err := c.Publish(context.Background(), m, 0); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	got, err := sub.NextMsg(2 * time.Second)
	if err != nil {
		t.Fatalf("native subscriber: %v", err)
	}
	if string(got.Data) != "hi" || got.Header.Get("Trace") != "1" {
		t.Fatalf("got %q %v", got.Data, got.Header)
	}
}

func TestConcurrentPublishesShareRoundTrips(t *testing.T) {
	t.Parallel()
	e := startEmbedded(t, testTokens())
	p := newTestPool(t, Config{Server: e})
	c := mustAcquire(t, p, adminToken)
	const n = 400
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if err := c.Publish(context.Background(), &Msg{Subject: "load", Data: []byte(fmt.Sprint(i))}, 0); err != nil {
				t.Errorf("Publish: %v", err)
			}
		})
	}
	wg.Wait()
	// Every publish was confirmed, by fewer PINGs than publishes.
	cz, err := e.s.Connz(nil)
	if err != nil {
		t.Fatal(err)
	}
	var in int64
	for _, ci := range cz.Conns {
		if ci.Name == "natsgate" {
			in = ci.InMsgs
		}
	}
	if in != n {
		t.Fatalf("server got %d messages, want %d", in, n)
	}
	stats := c.nc.Stats()
	if pings := c.roundTrips.Load(); pings >= n || pings == 0 {
		t.Fatalf("%d round trips for %d concurrent publishes; want sharing", pings, n)
	} else {
		t.Logf("%d publishes confirmed by %d round trips (%d bytes out)", n, pings, stats.OutBytes)
	}
}

func TestPermissionViolationsAreForbidden(t *testing.T) {
	t.Parallel()
	e := startEmbedded(t, testTokens())
	p := newTestPool(t, Config{Server: e})
	c := mustAcquire(t, p, ordersToken)
	ctx := context.Background()
	if err := c.Publish(ctx, &Msg{Subject: "orders.eu", Data: []byte("ok")}, 0); err != nil {
		t.Fatalf("allowed publish: %v", err)
	}
	for _, subj := range []string{"billing.x", "orders.secret"} {
		if err := c.Publish(ctx, &Msg{Subject: subj}, 0); !errors.Is(err, ErrForbidden) {
			t.Fatalf("publish %s = %v, want ErrForbidden", subj, err)
		}
	}
	// An allowed publish right after a denied one is still allowed.
	if err := c.Publish(ctx, &Msg{Subject: "orders.us"}, 0); err != nil {
		t.Fatalf("allowed publish after a denied one: %v", err)
	}
	errs := make([]error, 3)
	c.PublishBatch(ctx, []*Msg{{Subject: "orders.a"}, {Subject: "billing.b"}, {Subject: "orders.c"}}, errs, 0)
	if errs[0] != nil || !errors.Is(errs[1], ErrForbidden) || errs[2] != nil {
		t.Fatalf("batch = %v, want [nil forbidden nil]", errs)
	}
	if _, err := c.Subscribe(ctx, "billing.>", "", sinkFunc(func(*Msg) {}), 0); !errors.Is(err, ErrForbidden) {
		t.Fatalf("subscribe billing.> = %v, want ErrForbidden", err)
	}
	if _, err := c.Subscribe(ctx, "billing.>", "q", sinkFunc(func(*Msg) {}), 0); !errors.Is(err, ErrForbidden) {
		t.Fatalf("queue subscribe billing.> = %v, want ErrForbidden", err)
	}
	sub, err := c.Subscribe(ctx, "orders.>", "", sinkFunc(func(*Msg) {}), 0)
	if err != nil {
		t.Fatalf("allowed subscribe: %v", err)
	}
	sub.Close()
	start := time.Now()
	if _, err := c.Request(ctx, &Msg{Subject: "billing.q"}, 5*time.Second, 0); !errors.Is(err, ErrForbidden) {
		t.Fatalf("request billing.q = %v, want ErrForbidden", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("forbidden request took %v; it waited for the timeout", d)
	}
}

func TestRequestWithoutInboxPermissionIsForbidden(t *testing.T) {
	t.Parallel()
	e := startEmbedded(t, []Token{{Name: "noinbox", Token: "t", Subscribe: &SubjectPermission{Allow: []string{"x.>"}}}})
	p := newTestPool(t, Config{Server: e})
	c := mustAcquire(t, p, "t")
	_, err := c.Request(context.Background(), &Msg{Subject: "svc"}, 3*time.Second, 0)
	if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "_INBOX") {
		t.Fatalf("Request = %v, want ErrForbidden naming _INBOX", err)
	}
}

func TestRequestReplyNoRespondersAndTimeout(t *testing.T) {
	t.Parallel()
	e := startEmbedded(t, testTokens())
	p := newTestPool(t, Config{Server: e})
	c := mustAcquire(t, p, adminToken)
	nc := native(t, e, adminToken)
	if _, err := nc.Subscribe("echo", func(m *nats.Msg) {
		r := nats.NewMsg(m.Reply)
		r.Data = append([]byte("re:"), m.Data...)
		r.Header.Set("Served-By", "native")
		_ = m.RespondMsg(r)
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Subscribe("slow", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	ctx := context.Background()
	rep, err := c.Request(ctx, &Msg{Subject: "echo", Data: []byte("x")}, time.Second, 0)
	if err != nil || string(rep.Data) != "re:x" || rep.Header["Served-By"][0] != "native" {
		t.Fatalf("Request = %+v, %v", rep, err)
	}
	if _, err := c.Request(ctx, &Msg{Subject: "nobody.home"}, time.Second, 0); !errors.Is(err, ErrNoResponders) {
		t.Fatalf("no responders: %v", err)
	}
	if _, err := c.Request(ctx, &Msg{Subject: "slow"}, 100*time.Millisecond, 0); !errors.Is(err, ErrTimeout) {
		t.Fatalf("timeout: %v", err)
	}
}

type sinkFunc func(*Msg)

func (f sinkFunc) Deliver(m *Msg) { f(m) }
func (sinkFunc) Dropped(int)      {}

// countSink is comparable (a pointer), as sinks must be.
type countSink struct {
	dropped atomic.Int64
	mu      sync.Mutex
	msgs    []*Msg
	ch      chan struct{}
}

func newCountSink() *countSink { return &countSink{ch: make(chan struct{}, 1024)} }

func (s *countSink) Dropped(n int) { s.dropped.Add(int64(n)) }

func (s *countSink) Deliver(m *Msg) {
	s.mu.Lock()
	s.msgs = append(s.msgs, m)
	s.mu.Unlock()
	s.ch <- struct{}{}
}

func (s *countSink) wait(t testing.TB, n int) []*Msg {
	t.Helper()
	for range n {
		select {
		case <-s.ch:
		case <-time.After(3 * time.Second):
			t.Fatalf("waited 3s for message; have %d of %d", len(s.msgs), n)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Msg(nil), s.msgs...)
}

func TestSubscribersOfOneSubjectShareOneNATSSubscription(t *testing.T) {
	t.Parallel()
	e := startEmbedded(t, testTokens())
	p := newTestPool(t, Config{Server: e})
	c := mustAcquire(t, p, adminToken)
	ctx := context.Background()
	a, b := newCountSink(), newCountSink()
	sa, err := c.Subscribe(ctx, "fan.*", "", a, 0)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := c.Subscribe(ctx, "fan.*", "", b, 0)
	if err != nil {
		t.Fatal(err)
	}
	if n := c.nc.NumSubscriptions(); n != 1 {
		t.Fatalf("NATS subscriptions = %d, want 1 shared", n)
	}
	nc := native(t, e, adminToken)
	_ = nc.Publish("fan.1", []byte("one"))
	nc.Flush()
	ma, mb := a.wait(t, 1), b.wait(t, 1)
	if ma[0] != mb[0] {
		t.Fatal("the shared message was converted twice")
	}
	if string(ma[0].JSON()) != `{"subject":"fan.1","data":"one"}` {
		t.Fatalf("JSON = %s", ma[0].JSON())
	}
	sa.Close()
	_ = nc.Publish("fan.2", []byte("two"))
	nc.Flush()
	b.wait(t, 1)
	sb.Close()
	sb.Close() // idempotent
	if n := c.nc.NumSubscriptions(); n != 0 {
		t.Fatalf("NATS subscriptions after all closed = %d, want 0", n)
	}
	if n := len(a.msgs); n != 1 {
		t.Fatalf("closed sink got %d messages, want 1", n)
	}
}

// Sinks leave a shared subscription in any order (each taking the last
// one's place); whoever is left gets every message, and whoever left
// none, also after most have gone and the sinks' room shrinks.
func TestSinksLeavingASharedSubscriptionInAnyOrder(t *testing.T) {
	t.Parallel()
	e := startEmbedded(t, testTokens())
	p := newTestPool(t, Config{Server: e})
	c := mustAcquire(t, p, adminToken)
	ctx := context.Background()
	const n = 300
	sinks := make([]*countSink, n)
	subs := make([]*Subscription, n)
	for i := range n {
		sinks[i] = newCountSink()
		sub, err := c.Subscribe(ctx, "leave.x", "", sinks[i], 0)
		if err != nil {
			t.Fatal(err)
		}
		subs[i] = sub
	}
	nc := native(t, e, adminToken)
	open := make([]bool, n)
	for i := range open {
		open[i] = true
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for round, leave := range []int{1, 150, 100, 45, 4} { // the sinks' room shrinks after the third
		for _, i := range rng.Perm(n)[:n] {
			if leave == 0 {
				break
			}
			if open[i] {
				subs[i].Close()
				open[i], leave = false, leave-1
			}
		}
		if err := nc.Publish("leave.x", []byte(strconv.Itoa(round))); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		for i, s := range sinks {
			if open[i] {
				s.wait(t, 1)
			}
		}
		for i, s := range sinks {
			s.mu.Lock()
			got := len(s.msgs)
			s.mu.Unlock()
			if !open[i] && got > round {
				t.Fatalf("round %d: sink %d got a message after it left (%d messages)", round, i, got)
			}
			if open[i] && got != round+1 {
				t.Fatalf("round %d: sink %d has %d messages, want %d", round, i, got, round+1)
			}
		}
	}
	if n := c.nc.NumSubscriptions(); n != 0 {
		t.Fatalf("NATS subscriptions after all left = %d, want 0", n)
	}
}

func TestQueueSubscriptionsAreNotShared(t *testing.T) {
	t.Parallel()
	e := startEmbedded(t, testTokens())
	p := newTestPool(t, Config{Server: e})
	c := mustAcquire(t, p, adminToken)
	a, b := newCountSink(), newCountSink()
	for _, s := range []*countSink{a, b} {
		sub, err := c.Subscribe(context.Background(), "work", "workers", s, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(sub.Close)
	}
	nc := native(t, e, adminToken)
	for range 20 {
		_ = nc.Publish("work", nil)
	}
	nc.Flush()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		a.mu.Lock()
		b.mu.Lock()
		n := len(a.msgs) + len(b.msgs)
		a.mu.Unlock()
		b.mu.Unlock()
		if n == 20 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("queue group got %d+%d messages, want 20 in total", len(a.msgs), len(b.msgs))
}

func TestUnavailableWhenServerDown(t *testing.T) {
	t.Parallel()
	e := startEmbedded(t, testTokens())
	p := newTestPool(t, Config{URL: e.ClientURL(), ReconnectWait: 50 * time.Millisecond})
	c := mustAcquire(t, p, adminToken)
	if err := p.Ready(context.Background()); err != nil {
		t.Fatalf("Ready with server up: %v", err)
	}
	_ = e.Shutdown(context.Background())
	deadline := time.Now().Add(5 * time.Second)
	for c.Connected() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	if err := c.Publish(context.Background(), &Msg{Subject: "x"}, 0); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Publish with server down = %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Publish took %v to fail", d)
	}
	if err := p.Ready(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Ready with server down = %v", err)
	}
	p2 := newTestPool(t, Config{URL: e.ClientURL(), ConnectTimeout: time.Second})
	if _, err := p2.Acquire(context.Background(), adminToken); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Acquire with server down = %v, want ErrUnavailable", err)
	}
}

func TestBcryptTokensAndReload(t *testing.T) {
	t.Parallel()
	hash, err := bcrypt.GenerateFromPassword([]byte("hashed-secret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	tokens := append(testTokens(), Token{Name: "hashed", Token: string(hash)})
	e := startEmbedded(t, tokens)
	p := newTestPool(t, Config{Server: e})
	h := mustAcquire(t, p, "hashed-secret")
	if h.Name() != "hashed" {
		t.Fatalf("Name = %q, want the tokens-file name", h.Name())
	}
	if _, err := p.Acquire(context.Background(), string(hash)); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("presenting the hash itself = %v, want ErrUnauthorized", err)
	}
	adm := mustAcquire(t, p, adminToken)
	ord := mustAcquire(t, p, ordersToken)
	nc := native(t, e, ordersToken)

	// Remove "hashed" and "orders": their connections close, admin's stays.
	changed, keys, err := e.SetTokens(testTokens()[:1])
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(changed) != "[hashed orders]" {
		t.Fatalf("changed = %v", changed)
	}
	p.Forget(keys...)
	for _, c := range []*Conn{h, ord} {
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("%s's connection still open after removal", c.Name())
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for nc.IsConnected() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if nc.IsConnected() {
		t.Fatal("native client of a removed token still connected")
	}
	if !adm.Connected() {
		t.Fatal("admin's connection was dropped by the reload")
	}
	if _, err := p.Acquire(context.Background(), ordersToken); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("removed token = %v, want ErrUnauthorized", err)
	}
}

// TestPublishSpanningAReconnectIsNotConfirmed: nats.go carries a flush's
// PING over a reconnect, so the new server's PONG would "confirm" a
// message the old connection lost.
func TestPublishSpanningAReconnectIsNotConfirmed(t *testing.T) {
	t.Parallel()
	e := startEmbedded(t, testTokens())
	url := e.ClientURL()
	p := newTestPool(t, Config{URL: url, ReconnectWait: 20 * time.Millisecond})
	c := mustAcquire(t, p, adminToken)
	confirm, err := c.PublishStart(&Msg{Subject: "x", Data: []byte("in flight")}, 0)
	if err != nil {
		t.Fatal(err)
	}
	_ = e.Shutdown(context.Background())
	for c.Connected() {
		time.Sleep(time.Millisecond)
	}
	e2, err := StartEmbedded(EmbeddedConfig{Listen: strings.TrimPrefix(url, "nats://"), Tokens: testTokens()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e2.Shutdown(context.Background()) })
	deadline := time.Now().Add(5 * time.Second)
	for !c.Connected() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := confirm(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("confirm across a reconnect = %v, want ErrUnavailable", err)
	}
	// After the reconnect, publishing is confirmed again.
	if err := c.Publish(context.Background(), &Msg{Subject: "x"}, 0); err != nil {
		t.Fatalf("publish after reconnect: %v", err)
	}
}

// blockingSink holds up its subscription's callback until released.
type blockingSink struct {
	countSink
	release chan struct{}
}

func (b *blockingSink) Deliver(m *Msg) {
	<-b.release
	b.countSink.Deliver(m)
}

func TestSubscriptionBufferIsBoundedAndDropsAreReported(t *testing.T) {
	t.Parallel()
	e := startEmbedded(t, testTokens())
	p := newTestPool(t, Config{Server: e, PendingMsgs: 10, PendingBytes: 1 << 20})
	c := mustAcquire(t, p, adminToken)
	s := &blockingSink{countSink: *newCountSink(), release: make(chan struct{})}
	sub, err := c.Subscribe(context.Background(), "slow", "", s, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	nc := native(t, e, adminToken)
	for range 100 {
		nc.Publish("slow", []byte("x"))
	}
	nc.Flush()
	deadline := time.Now().Add(5 * time.Second)
	for s.dropped.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	close(s.release)
	// Drops are told with the next message at the latest: every message
	// is then either delivered or reported dropped.
	nc.Publish("slow", []byte("last"))
	nc.Flush()
	for time.Now().Before(deadline) {
		s.mu.Lock()
		got := int64(len(s.msgs))
		s.mu.Unlock()
		if got+s.dropped.Load() == 101 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.mu.Lock()
	delivered := len(s.msgs)
	s.mu.Unlock()
	if d := s.dropped.Load(); d+int64(delivered) != 101 || d < 50 {
		t.Fatalf("%d delivered and %d reported dropped of 101 published into a buffer of 10 behind a stuck callback", delivered, d)
	}
}
