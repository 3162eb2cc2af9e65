package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// startJetStream starts an embedded server with JetStream and returns it
// with an admin JetStream client and a stream ORDERS on orders.>.
func startJetStream(t testing.TB) (*Embedded, jetstream.JetStream, jetstream.Stream) {
	t.Helper()
	e, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", Tokens: testTokens(), JetStream: true, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	t.Cleanup(func() { _ = e.Shutdown(context.Background()) })
	js, err := jetstream.New(native(t, e, adminToken))
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.>"}})
	if err != nil {
		t.Fatal(err)
	}
	return e, js, st
}

func publishStored(t testing.TB, js jetstream.JetStream, subject string, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		if _, err := js.Publish(context.Background(), subject, fmt.Appendf(nil, "m%d", i)); err != nil {
			t.Fatalf("stored publish %d: %v", i, err)
		}
	}
}

func consumers(t testing.TB, st jetstream.Stream) int {
	t.Helper()
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Consumers
}

// nextSeqs reads n messages and checks they are seqs from, from+1, ….
func nextSeqs(t testing.TB, sub *StreamSubscription, from uint64, n int) {
	t.Helper()
	for i := range n {
		m, err := sub.Next()
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		if want := from + uint64(i); m.Seq() != want || string(m.Data) != fmt.Sprintf("m%d", want) {
			t.Fatalf("got seq %d %q, want seq %d", m.Seq(), m.Data, want)
		}
	}
}

func TestStreamSubscriptionCarriesStreamSeqAndTime(t *testing.T) {
	t.Parallel()
	e, js, st := startJetStream(t)
	publishStored(t, js, "orders.eu", 1, 3)
	c := mustAcquire(t, newTestPool(t, Config{Server: e}), adminToken)
	sub, err := c.SubscribeStream(context.Background(), "orders.*", Start{Seq: 2}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if sub.Stream() != "ORDERS" || sub.Gap() != nil {
		t.Fatalf("stream %q gap %+v", sub.Stream(), sub.Gap())
	}
	m, err := sub.Next()
	if err != nil {
		t.Fatal(err)
	}
	stored, err := st.GetMsg(context.Background(), 2)
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := json.Unmarshal(m.JSON(), &obj); err != nil {
		t.Fatalf("%s: %v", m.JSON(), err)
	}
	want := fmt.Sprintf(`{"subject":"orders.eu","data":"m2","stream":"ORDERS","seq":2,"time":"%s"}`, stored.Time.UTC().Format("2006-01-02T15:04:05.000000000Z07:00"))
	if string(m.JSON()) != want {
		t.Fatalf("message object\n%s\nwant\n%s", m.JSON(), want)
	}
	if got, err := time.Parse(time.RFC3339Nano, obj["time"].(string)); err != nil || !got.Equal(stored.Time) {
		t.Fatalf("time %v (%v), stored %v", obj["time"], err, stored.Time)
	}
	if consumers(t, st) != 1 {
		t.Fatal("no consumer on the stream")
	}
	sub.Stop()
	if _, err := sub.Next(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after Stop = %v, want ErrClosed", err)
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	if n := consumers(t, st); n != 0 {
		t.Fatalf("%d consumers left after Close", n)
	}
}

// TestStreamSubscriptionSurvivesReconnects forces the token's connection
// to reconnect while messages are stored: the ordered consumer recreates
// itself from one past the last message delivered, so every message
// arrives once, in order.
func TestStreamSubscriptionSurvivesReconnects(t *testing.T) {
	t.Parallel()
	e, js, st := startJetStream(t)
	publishStored(t, js, "orders.eu", 1, 20)
	p := newTestPool(t, Config{URL: e.ClientURL(), ReconnectWait: 20 * time.Millisecond})
	c := mustAcquire(t, p, adminToken)
	sub, err := c.SubscribeStream(context.Background(), "orders.>", Start{Deliver: DeliverAll}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	nextSeqs(t, sub, 1, 10)
	for round := range 3 {
		reconnects := c.reconnects()
		if err := c.nc.ForceReconnect(); err != nil {
			t.Fatal(err)
		}
		from := 21 + round*20
		publishStored(t, js, "orders.eu", from, from+19)
		deadline := time.Now().Add(5 * time.Second)
		for c.reconnects() == reconnects || !c.Connected() {
			if time.Now().After(deadline) {
				t.Fatal("the connection did not reconnect")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	nextSeqs(t, sub, 11, 70)
	// Nothing after the last: a duplicate would show up here.
	publishStored(t, js, "orders.eu", 81, 81)
	nextSeqs(t, sub, 81, 1)
	// The consumer was recreated (ordered consumers are named prefix_serial).
	if name := sub.cons.CachedInfo().Name; strings.HasSuffix(name, "_1") {
		t.Fatalf("consumer %s is the first one: no reconnect reached it", name)
	}
	sub.Stop()
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for consumers(t, st) != 0 { // the consumers nats.go replaced go asynchronously
		if time.Now().After(deadline) {
			t.Fatalf("%d consumers left", consumers(t, st))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStreamSubscriptionRefusals(t *testing.T) {
	t.Parallel()
	e, js, _ := startJetStream(t)
	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "BILLING", Subjects: []string{"billing.>"}}); err != nil {
		t.Fatal(err)
	}
	p := newTestPool(t, Config{Server: e})
	admin := mustAcquire(t, p, adminToken)
	orders := mustAcquire(t, p, ordersToken)
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		c       *Conn
		subject string
		start   Start
		want    error
	}{
		{"no stream", admin, "other.x", Start{Deliver: DeliverAll}, ErrNoStream},
		{"several streams", admin, ">", Start{Deliver: DeliverAll}, ErrSeveralStreams},
		{"subject forbidden", orders, "billing.>", Start{Deliver: DeliverAll}, ErrForbidden},
		{"JetStream API forbidden", orders, "orders.>", Start{Deliver: DeliverAll}, ErrForbidden},
		{"two starts", admin, "orders.>", Start{Deliver: DeliverAll, Seq: 1}, ErrInvalid},
		{"no start", admin, "orders.>", Start{}, ErrInvalid},
		{"unknown deliver", admin, "orders.>", Start{Deliver: "first"}, ErrInvalid},
		{"bad subject", admin, "orders..x", Start{Deliver: DeliverAll}, ErrBadSubject},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			_, err := tc.c.SubscribeStream(ctx, tc.subject, tc.start, 0)
			if !errors.Is(err, tc.want) {
				t.Fatalf("SubscribeStream = %v, want %v", err, tc.want)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("took %v", d)
			}
		})
	}
}

// TestPoolCloseRemovesConsumers closes the pool under open JetStream
// subscriptions, as a gateway shutting down does: their owners see Next
// fail, and by the time Close returns the consumers are gone.
func TestPoolCloseRemovesConsumers(t *testing.T) {
	t.Parallel()
	e, js, st := startJetStream(t)
	publishStored(t, js, "orders.eu", 1, 3)
	p := NewPool(Config{Server: e})
	c, err := p.Acquire(context.Background(), adminToken)
	if err != nil {
		t.Fatal(err)
	}
	owners := make(chan error, 5)
	for range 5 {
		sub, err := c.SubscribeStream(context.Background(), "orders.>", Start{Deliver: DeliverAll}, 0)
		if err != nil {
			t.Fatal(err)
		}
		go func() { // an owner, as the gateway's feeds are, slow to finish
			var err error
			for err == nil {
				_, err = sub.Next()
			}
			time.Sleep(100 * time.Millisecond)
			_ = sub.Close()
			owners <- err
		}()
	}
	c.Release()
	if n := consumers(t, st); n != 5 {
		t.Fatalf("%d consumers, want 5", n)
	}
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := consumers(t, st); n != 0 {
		t.Fatalf("%d consumers left after Pool.Close", n)
	}
	for range 5 {
		if err := <-owners; !errors.Is(err, ErrClosed) {
			t.Fatalf("owner's Next ended with %v, want ErrClosed", err)
		}
	}
}

// TestStreamSubscriptionEndsWhenItsStreamIsDeleted deletes the consumer
// of a subscription, which recreates itself and goes on, then its
// stream: Next fails with ErrNoStream within consumerResets' retries,
// and no consumer is left in the account.
func TestStreamSubscriptionEndsWhenItsStreamIsDeleted(t *testing.T) {
	t.Parallel()
	e, js, st := startJetStream(t)
	publishStored(t, js, "orders.eu", 1, 2)
	c := mustAcquire(t, newTestPool(t, Config{Server: e}), adminToken)
	sub, err := c.SubscribeStream(context.Background(), "orders.*", Start{Deliver: DeliverAll}, 0)
	if err != nil {
		t.Fatal(err)
	}
	nextSeqs(t, sub, 1, 2)
	if err := st.DeleteConsumer(context.Background(), sub.cons.CachedInfo().Name); err != nil {
		t.Fatal(err)
	}
	publishStored(t, js, "orders.eu", 3, 3)
	nextSeqs(t, sub, 3, 1)

	next := make(chan error, 1)
	go func() {
		_, err := sub.Next()
		next <- err
	}()
	if err := js.DeleteStream(context.Background(), "ORDERS"); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	select {
	case err = <-next:
	case <-time.After(10 * time.Second):
		sub.Stop()
		t.Fatalf("Next still waiting 10s after the stream was deleted (returned %v once stopped)", <-next)
	}
	if !errors.Is(err, ErrNoStream) || !strings.Contains(err.Error(), "ORDERS was deleted") {
		t.Fatalf("Next = %v, want ErrNoStream saying ORDERS was deleted", err)
	}
	t.Logf("ended %v after the stream was deleted", time.Since(deleted).Round(time.Millisecond))
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	ai, err := js.AccountInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if ai.Consumers != 0 || ai.Streams != 0 {
		t.Fatalf("account holds %d streams and %d consumers, want none", ai.Streams, ai.Consumers)
	}
}
