package bridge

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestLogLimiterLetsOneLinePerKindPerIntervalAndCountsTheRest(t *testing.T) {
	t.Parallel()
	var l logLimiter
	l.init(10 * time.Second)
	now := time.Unix(1000, 0)
	l.now = func() time.Time { return now }
	check := func(kind string, wantOK bool, wantSuppressed int) {
		t.Helper()
		ok, n := l.allow(kind)
		if ok != wantOK || n != wantSuppressed {
			t.Fatalf("allow(%q) at %v = %v, %d; want %v, %d", kind, now.Unix(), ok, n, wantOK, wantSuppressed)
		}
	}
	check("bad header", true, 0)
	for range 500 {
		check("bad header", false, 0)
	}
	check("other", true, 0) // kinds are limited apart
	now = now.Add(9 * time.Second)
	check("bad header", false, 0)
	now = now.Add(time.Second)
	check("bad header", true, 501)
	check("bad header", false, 0)
	now = now.Add(10 * time.Second)
	check("bad header", true, 1)
	// Past maxLogKinds distinct kinds, the rest share one allowance.
	l.init(10 * time.Second)
	l.now = func() time.Time { return now }
	for i := range maxLogKinds {
		l.allow(strings.Repeat("k", i+1))
	}
	check("new kind 1", true, 0)
	check("new kind 2", false, 0)
	if len(l.kinds) > maxLogKinds+1 {
		t.Fatalf("the limiter holds %d kinds", len(l.kinds))
	}
}

// recordHandler is a slog.Handler that keeps every record.
type recordHandler struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.records = append(h.records, r.Clone())
	h.mu.Unlock()
	return nil
}
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordHandler) WithGroup(string) slog.Handler      { return h }

func (h *recordHandler) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, r := range h.records {
		if r.Message == msg {
			n++
		}
	}
	return n
}

func TestBadHeaderFloodLogsOneLineNotOnePerMessage(t *testing.T) {
	t.Parallel()
	e := startEmbedded(t, verdictTokens())
	h := &recordHandler{}
	p := newTestPool(t, Config{Server: e, Logger: slog.New(h)})
	c := mustAcquire(t, p, limitedToken)
	var got atomic.Int64
	sub, err := c.Subscribe(context.Background(), "noise", "", sinkFunc(func(*Msg) { got.Add(1) }), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	floodBadHeaders(t, clientAddr(e), noisyToken, "noise")
	deadline := time.Now().Add(5 * time.Second)
	for (h.count("nats async error") == 0 || got.Load() < 2000) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := h.count("nats async error"); n != 1 {
		t.Fatalf("%d log lines for %d messages with bad headers in well under %v, want 1", n, got.Load(), asyncLogEvery)
	}
}
