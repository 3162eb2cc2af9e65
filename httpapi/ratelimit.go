package httpapi

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// maxTrackedAddrs bounds the addresses the failure limiter remembers. When
// full, expired windows are pruned and, if that is not enough, the
// limiter forgets everyone: a flood of addresses resets it rather than
// growing the gateway's memory.
const maxTrackedAddrs = 1 << 16

// failureLimiter refuses a client address (its IP; the port is ignored)
// once it has failed authentication limit times within window, until the
// window ends. Successful requests are never counted.
type failureLimiter struct {
	limit  int
	window time.Duration

	mu    sync.Mutex
	addrs map[string]*failWindow
	// tracked is len(addrs), so the usual case (no failures anywhere)
	// needs no lock.
	tracked atomic.Int64
}

type failWindow struct {
	start time.Time
	n     int
}

func newFailureLimiter(limit int, window time.Duration) *failureLimiter {
	return &failureLimiter{limit: limit, window: window, addrs: make(map[string]*failWindow)}
}

func ipOf(remote string) string {
	if host, _, err := net.SplitHostPort(remote); err == nil {
		return host
	}
	return remote
}

// check returns errTooManyFailed while remote is over its limit.
func (l *failureLimiter) check(remote string) error {
	if l.limit <= 0 || l.tracked.Load() == 0 {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.addrs[ipOf(remote)]
	if w == nil || w.n < l.limit {
		return nil
	}
	left := l.window - time.Since(w.start)
	if left <= 0 {
		delete(l.addrs, ipOf(remote))
		l.tracked.Store(int64(len(l.addrs)))
		return nil
	}
	return &limitedError{left: left}
}

// limitedError is errTooManyFailed with the time left in the window.
type limitedError struct{ left time.Duration }

func (e *limitedError) Error() string {
	return fmt.Sprintf("%v: retry in %s", errTooManyFailed, e.left.Round(time.Second))
}

func (e *limitedError) Is(target error) bool { return target == errTooManyFailed }

// retrySeconds rounds the time left up to whole seconds, for Retry-After.
func (e *limitedError) retrySeconds() int { return int((e.left + time.Second - 1) / time.Second) }

// fail counts a failed authentication from remote.
func (l *failureLimiter) fail(remote string) {
	if l.limit <= 0 {
		return
	}
	ip, now := ipOf(remote), time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.addrs[ip]
	if w == nil || now.Sub(w.start) >= l.window {
		if w == nil && len(l.addrs) >= maxTrackedAddrs {
			for k, o := range l.addrs {
				if now.Sub(o.start) >= l.window {
					delete(l.addrs, k)
				}
			}
			if len(l.addrs) >= maxTrackedAddrs {
				clear(l.addrs)
			}
		}
		w = &failWindow{start: now}
		l.addrs[ip] = w
	}
	w.n++
	l.tracked.Store(int64(len(l.addrs)))
}
