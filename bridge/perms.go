package bridge

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

type violationKind uint8

const (
	denyPublish violationKind = iota + 1
	denyReply
	denySubscribe
	// denyUnknown is a permission violation whose text the gateway could
	// not read: it refuses whatever it is asked about.
	denyUnknown
)

type violation struct {
	kind           violationKind
	subject, queue string // for denyUnknown, the server's text
}

// violationRing is the size of the permission log's ring. A caller that
// would need a violation older than the ring holds is told ErrForbidden
// rather than risk a success for a message the server refused.
const violationRing = 1024

// permissionLog records the permission violations a connection's server
// reported, numbered in arrival order, so a publish or subscription can
// ask "was I refused after I was sent?" once its round trip is confirmed.
// Same token, same permissions: a violation for a subject applies to every
// use of that subject on the connection.
//
// The connection's errTap records violations as it reads them, before
// nats.go parses what follows, so once a flush returns every violation the
// server sent before its PONG is here.
type permissionLog struct {
	mu       sync.Mutex
	n        uint64        // number of the newest recorded violation
	latest   atomic.Uint64 // n, readable without the lock
	ring     []violation   // violation n at (n-1)%violationRing; grows to violationRing, most connections never see one
	watchers map[*watcher]struct{}
	mux      string // the wildcard subject nats.go receives replies on
	inbox    string // mux, once the server refused it
}

type watcher struct {
	subject string // a literal subject, or a prefix ending in ".>"
	cancel  context.CancelCauseFunc
}

// matches reports whether a refused publish subject concerns the watcher.
func (w *watcher) matches(subject string) bool {
	if prefix, ok := strings.CutSuffix(w.subject, ">"); ok {
		return strings.HasPrefix(subject, prefix)
	}
	return w.subject == subject
}

func (l *permissionLog) init() {
	l.watchers = make(map[*watcher]struct{})
}

func (l *permissionLog) seq() uint64 { return l.latest.Load() }

// setMux names the subject replies arrive on: when the server refuses
// that subscription no request on this connection can get a reply.
func (l *permissionLog) setMux(mux string) {
	l.mu.Lock()
	l.mux = mux
	l.mu.Unlock()
}

// record notes a permission violation the server reported. It runs on the
// connection's read path, so it never blocks.
func (l *permissionLog) record(v violation) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n++
	l.latest.Store(l.n)
	if i := int((l.n - 1) % violationRing); i < len(l.ring) {
		l.ring[i] = v
	} else {
		l.ring = append(l.ring, v)
	}
	switch {
	case v.kind == denySubscribe && l.mux != "" && v.subject == l.mux:
		l.inbox = l.mux
		for w := range l.watchers {
			w.cancel(l.inboxErrorLocked())
		}
	case v.kind == denyPublish:
		for w := range l.watchers {
			if w.matches(v.subject) {
				w.cancel(fmt.Errorf("%w: publish to %q", ErrForbidden, v.subject))
			}
		}
	case v.kind == denyUnknown:
		for w := range l.watchers {
			w.cancel(unknownViolation(v))
		}
	}
}

func unknownViolation(v violation) error {
	text := v.subject
	if len(text) > 200 {
		text = text[:200] + "…"
	}
	return fmt.Errorf("%w: NATS refused something on this connection and the gateway could not tell what: %q", ErrForbidden, text)
}

// find returns the first violation after seq that match accepts.
func (l *permissionLog) find(seq uint64, match func(violation) error) error {
	if l.latest.Load() == seq { // none since seq: no lock, no walk
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n-seq > violationRing {
		return fmt.Errorf("%w: too many permission violations on this token to tell which", ErrForbidden)
	}
	for s := seq + 1; s <= l.n; s++ {
		v := l.ring[(s-1)%violationRing]
		if v.kind == denyUnknown {
			return unknownViolation(v)
		}
		if err := match(v); err != nil {
			return err
		}
	}
	return nil
}

func (l *permissionLog) publishDenied(seq uint64, subject, reply string) error {
	return l.find(seq, func(v violation) error {
		switch {
		case v.kind == denyPublish && v.subject == subject:
			return fmt.Errorf("%w: publish to %q", ErrForbidden, subject)
		case v.kind == denyReply && reply != "" && v.subject == reply:
			return fmt.Errorf("%w: publish with reply subject %q", ErrForbidden, reply)
		}
		return nil
	})
}

func (l *permissionLog) subscribeDenied(seq uint64, subject, queue string) error {
	return l.find(seq, func(v violation) error {
		if v.kind == denySubscribe && v.subject == subject && v.queue == queue {
			return fmt.Errorf("%w: subscribe to %q", ErrForbidden, subject)
		}
		return nil
	})
}

// watch cancels a request in flight when a publish to subject (or, for
// "prefix.>", to any subject under prefix) is refused.
func (l *permissionLog) watch(subject string, cancel context.CancelCauseFunc) (stop func()) {
	w := &watcher{subject: subject, cancel: cancel}
	l.mu.Lock()
	l.watchers[w] = struct{}{}
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		delete(l.watchers, w)
		l.mu.Unlock()
	}
}

func (l *permissionLog) inboxError() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inboxErrorLocked()
}

func (l *permissionLog) inboxErrorLocked() error {
	if l.inbox == "" {
		return nil
	}
	return fmt.Errorf("%w: this token may not subscribe to %q, which replies arrive on (allow \"_INBOX.>\")", ErrForbidden, l.inbox)
}

// parseViolation reads nats-server's -ERR texts (server/client.go):
//
//	Permissions Violation for Publish to "x"
//	Permissions Violation for Publish with Reply of "x"
//	Permissions Violation for Subscription to "x"
//	Permissions Violation for Subscription to "x" using queue "q"
func parseViolation(s string) (violation, bool) {
	const marker = "Permissions Violation for "
	i := strings.Index(s, marker)
	if i < 0 {
		return violation{}, false
	}
	s = s[i+len(marker):]
	var v violation
	switch {
	case strings.HasPrefix(s, "Publish to "):
		v.kind, s = denyPublish, s[len("Publish to "):]
	case strings.HasPrefix(s, "Publish with Reply of "):
		v.kind, s = denyReply, s[len("Publish with Reply of "):]
	case strings.HasPrefix(s, "Subscription to "):
		v.kind, s = denySubscribe, s[len("Subscription to "):]
	default:
		return violation{}, false
	}
	var ok bool
	if v.subject, s, ok = unquotePrefix(s); !ok {
		return violation{}, false
	}
	if v.kind == denySubscribe && strings.HasPrefix(s, " using queue ") {
		if v.queue, _, ok = unquotePrefix(s[len(" using queue "):]); !ok {
			return violation{}, false
		}
	}
	return v, true
}

func unquotePrefix(s string) (value, rest string, ok bool) {
	q, err := strconv.QuotedPrefix(s)
	if err != nil {
		return "", s, false
	}
	value, err = strconv.Unquote(q)
	return value, s[len(q):], err == nil
}
