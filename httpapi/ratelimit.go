package httpapi

import (
	"container/list"
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/natsgate/natsgate/bridge"
)

// maxTrackedClients bounds the clients the failure limiter remembers. When
// full, the client whose window started longest ago is forgotten to make
// room: never everyone, so a flood of addresses cannot wipe the counters
// of the clients already limited.
const maxTrackedClients = 1 << 16

// maxAuthWait bounds how long an authentication attempt waits for a place
// under its client's limit while attempts in flight hold every place.
const maxAuthWait = 5 * time.Second

// failureLimiter refuses a client once its failed authentications within
// window reach limit, until the window ends. A client is an IPv4 address
// or an IPv6 /64 (one subscriber's usual allocation, which holds 2^64
// addresses); the port is ignored. Attempts still in flight hold places
// under the limit too, which is what keeps a burst of simultaneous bad
// tokens from all reaching NATS before the first failure is counted; an
// attempt that finds every remaining place held waits for one to be given
// back (at most maxAuthWait) rather than being refused, so many users
// behind one address (a NAT, a proxy) whose tokens are good are only
// spread out, never refused. Attempts with the same token share one
// place, since the pool makes them one connection attempt; a success
// frees its place and leaves no count.
type failureLimiter struct {
	limit   int
	window  time.Duration
	maxSize int // maxTrackedClients; lowered by tests

	mu    sync.Mutex
	byKey map[netip.Prefix]*failWindow
	order *list.List // of *failWindow, oldest start first
}

// failWindow is one client's window. Guarded by failureLimiter.mu.
type failWindow struct {
	client  netip.Prefix
	start   time.Time
	n       int                     // failures counted in this window
	pending map[bridge.TokenKey]int // attempts in flight, by token
	freed   chan struct{}           // closed when an attempt ends; made by a waiter
	elem    *list.Element           // in order; nil once forgotten
}

func newFailureLimiter(limit int, window time.Duration) *failureLimiter {
	return &failureLimiter{limit: limit, window: window, maxSize: maxTrackedClients,
		byKey: make(map[netip.Prefix]*failWindow), order: list.New()}
}

// clientOf is the limiter's key for a remote address: the IPv4 address
// (IPv4-mapped IPv6 included), or the IPv6 address's /64. An address that
// does not parse gets the zero prefix, one bucket for all such.
func clientOf(remote string) netip.Prefix {
	host := remote
	if h, _, err := net.SplitHostPort(remote); err == nil {
		host = h
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Prefix{}
	}
	a = a.WithZone("").Unmap()
	bits := 64
	if a.Is4() {
		bits = 32
	}
	p, _ := a.Prefix(bits)
	return p
}

// begin admits an authentication attempt with the token whose key is key,
// or refuses it with a *limitedError (errTooManyFailed) while the client
// is at its limit. While attempts in flight hold the client's remaining
// places it waits for one, until ctx ends or maxAuthWait has passed. An
// admitted attempt holds its place until done is called: done(true)
// counts a failure, done(false) just frees the place.
func (l *failureLimiter) begin(ctx context.Context, remote string, key bridge.TokenKey) (done func(failed bool), err error) {
	if l.limit <= 0 {
		return func(bool) {}, nil
	}
	client := clientOf(remote)
	var deadline <-chan time.Time
	l.mu.Lock()
	for {
		now := time.Now()
		w := l.byKey[client]
		if w == nil {
			w = l.addLocked(client, now)
		} else {
			l.renewLocked(w, now)
		}
		if w.pending[key] > 0 || w.n+len(w.pending) < l.limit {
			if w.pending == nil {
				w.pending = make(map[bridge.TokenKey]int)
			}
			w.pending[key]++
			l.mu.Unlock()
			return func(failed bool) { l.end(w, key, failed) }, nil
		}
		if w.n >= l.limit {
			left := max(l.window-now.Sub(w.start), time.Second)
			l.mu.Unlock()
			return nil, &limitedError{left: left}
		}
		if w.freed == nil {
			w.freed = make(chan struct{})
		}
		freed := w.freed
		l.mu.Unlock()
		if deadline == nil {
			t := time.NewTimer(maxAuthWait)
			defer t.Stop()
			deadline = t.C
		}
		select {
		case <-freed:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-deadline:
			return nil, &limitedError{left: time.Second}
		}
		l.mu.Lock()
	}
}

func (l *failureLimiter) end(w *failWindow, key bridge.TokenKey, failed bool) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if w.pending[key]--; w.pending[key] <= 0 {
		delete(w.pending, key)
	}
	if w.freed != nil {
		close(w.freed)
		w.freed = nil
	}
	if failed {
		counted := w
		if w.elem == nil { // forgotten to make room meanwhile: count it anew
			if counted = l.byKey[w.client]; counted == nil {
				counted = l.addLocked(w.client, now)
			}
		}
		l.renewLocked(counted, now)
		counted.n++
		l.dropIfEmptyLocked(counted)
	}
	l.dropIfEmptyLocked(w)
}

// renewLocked starts a new window for w if its window has ended.
func (l *failureLimiter) renewLocked(w *failWindow, now time.Time) {
	if now.Sub(w.start) >= l.window {
		w.start, w.n = now, 0
		if w.elem != nil {
			l.order.MoveToBack(w.elem)
		}
	}
}

// addLocked tracks a new client, forgetting the oldest window if the
// table is full.
func (l *failureLimiter) addLocked(client netip.Prefix, now time.Time) *failWindow {
	for l.order.Len() >= l.maxSize {
		old := l.order.Remove(l.order.Front()).(*failWindow)
		old.elem = nil
		delete(l.byKey, old.client)
	}
	w := &failWindow{client: client, start: now}
	w.elem = l.order.PushBack(w)
	l.byKey[client] = w
	return w
}

// dropIfEmptyLocked forgets a client with nothing counted or in flight.
func (l *failureLimiter) dropIfEmptyLocked(w *failWindow) {
	if w.elem != nil && w.n == 0 && len(w.pending) == 0 {
		l.order.Remove(w.elem)
		w.elem = nil
		delete(l.byKey, w.client)
	}
}

// size is the number of clients remembered, for tests.
func (l *failureLimiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.byKey)
}

// limitedError is errTooManyFailed with the time left in the window.
type limitedError struct{ left time.Duration }

func (e *limitedError) Error() string {
	return fmt.Sprintf("%v: retry in %s", errTooManyFailed, e.left.Round(time.Second))
}

func (e *limitedError) Is(target error) bool { return target == errTooManyFailed }

// retrySeconds rounds the time left up to whole seconds, for Retry-After.
func (e *limitedError) retrySeconds() int { return int((e.left + time.Second - 1) / time.Second) }
