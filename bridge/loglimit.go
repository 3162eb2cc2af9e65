package bridge

import (
	"sync"
	"time"
)

// asyncLogEvery is how often a connection logs one kind of async NATS
// error at most. A message with a malformed header block is an async error
// in nats.go, and any tenant may publish them by the thousand to a subject
// the gateway subscribes to.
const asyncLogEvery = 10 * time.Second

// maxLogKinds bounds the kinds a logLimiter tells apart; the rest share
// one allowance.
const maxLogKinds = 32

// logLimiter lets through at most one log line per kind per interval and
// counts the lines it held back, for the next line of that kind to say.
type logLimiter struct {
	mu    sync.Mutex
	every time.Duration
	now   func() time.Time
	kinds map[string]*logKind
}

type logKind struct {
	next       time.Time
	suppressed int
}

func (l *logLimiter) init(every time.Duration) {
	l.every, l.now, l.kinds = every, time.Now, make(map[string]*logKind)
}

// allow reports whether a line of this kind may be logged now and, if so,
// how many were held back since the last one.
func (l *logLimiter) allow(kind string) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := l.kinds[kind]
	if k == nil {
		if len(l.kinds) >= maxLogKinds {
			kind = "\x00other"
			k = l.kinds[kind]
		}
		if k == nil {
			k = &logKind{}
			l.kinds[kind] = k
		}
	}
	now := l.now()
	if now.Before(k.next) {
		k.suppressed++
		return false, 0
	}
	suppressed, k.suppressed, k.next = k.suppressed, 0, now.Add(l.every)
	return true, suppressed
}

// suppressedAttr is the log attribute for lines a logLimiter held back,
// none when there were none.
func suppressedAttr(n int) []any {
	if n == 0 {
		return nil
	}
	return []any{"suppressed", n}
}
