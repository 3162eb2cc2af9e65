package bridge

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestSettleWaitsUntilTheOldConnectionHandedEverythingOver: messages the
// old connection has received but not yet handed to the sink (its
// callback held up) are delivered before Settle returns; after the old
// subscription closes, the moved one delivers alone.
func TestSettleWaitsUntilTheOldConnectionHandedEverythingOver(t *testing.T) {
	t.Parallel()
	e := startEmbedded(t, testTokens())
	p := newTestPool(t, Config{Server: e})
	old, fresh := mustAcquire(t, p, adminToken), mustAcquire(t, p, ordersToken)
	s := &blockingSink{countSink: *newCountSink(), release: make(chan struct{})}
	release := sync.OnceFunc(func() { close(s.release) })
	t.Cleanup(release) // a failure must not leave the callback held up
	ctx := context.Background()
	sub, err := old.Subscribe(ctx, "orders.m", "", s, 0)
	if err != nil {
		t.Fatal(err)
	}
	nc := native(t, e, adminToken)
	for range 5 {
		nc.Publish("orders.m", []byte("before"))
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	moved, err := sub.MoveTo(ctx, fresh, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer moved.Close()
	settled := make(chan error, 1)
	go func() { settled <- old.Settle(ctx) }()
	select {
	case err := <-settled:
		t.Fatalf("Settle returned (%v) with the old connection's messages still held up", err)
	case <-time.After(100 * time.Millisecond):
	}
	release()
	if err := <-settled; err != nil {
		t.Fatalf("Settle: %v", err)
	}
	s.mu.Lock()
	n := len(s.msgs)
	s.mu.Unlock()
	if n != 5 {
		t.Fatalf("%d of the 5 messages the old connection received were delivered when Settle returned", n)
	}
	sub.Close()
	nc.Publish("orders.m", []byte("after"))
	if got := s.wait(t, 6); string(got[5].Data) != "after" {
		t.Fatalf("the sixth message %q, want after", got[5].Data)
	}
	if err := fresh.flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.ch:
		t.Fatal("a message came twice after the old subscription closed")
	case <-time.After(50 * time.Millisecond):
	}
}
