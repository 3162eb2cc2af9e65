package bridge

import (
	"errors"
	"strconv"
	"testing"
)

// TestPermissionLogRing: the log's ring starts empty, grows with the
// violations up to violationRing, then wraps, and a caller still finds
// the violations after its sequence number, and is refused when those
// were overwritten.
func TestPermissionLogRing(t *testing.T) {
	l := newTestLog()
	if err := l.publishDenied(l.seq(), "s.1", ""); err != nil {
		t.Fatalf("nothing recorded yet: %v", err)
	}
	seq := l.seq()
	l.record(violation{kind: denyPublish, subject: "s.1"})
	if err := l.publishDenied(seq, "s.1", ""); !errors.Is(err, ErrForbidden) {
		t.Fatalf("first violation: %v", err)
	}
	if len(l.ring) != 1 {
		t.Fatalf("ring holds %d after one violation", len(l.ring))
	}
	const n = violationRing + 10
	for i := 2; i <= n; i++ {
		l.record(violation{kind: denyPublish, subject: "s." + strconv.Itoa(i)})
	}
	if len(l.ring) != violationRing {
		t.Fatalf("ring grew to %d, bound %d", len(l.ring), violationRing)
	}
	if err := l.publishDenied(n-1, "s."+strconv.Itoa(n), ""); !errors.Is(err, ErrForbidden) {
		t.Fatalf("newest violation after wrapping: %v", err)
	}
	if err := l.publishDenied(n-1, "s."+strconv.Itoa(n-1), ""); err != nil {
		t.Fatalf("a violation before the caller's sequence counted: %v", err)
	}
	if err := l.publishDenied(n-violationRing, "s.none", ""); err != nil {
		t.Fatalf("the oldest violation still held: %v", err)
	}
	if err := l.publishDenied(n-violationRing-1, "s.none", ""); !errors.Is(err, ErrForbidden) {
		t.Fatalf("a violation already overwritten must refuse: %v", err)
	}
}
