package httpapi

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Frames that reach the gateway in one write, the first larger than the
// session's read buffer, leave the second in the socket after the first
// is read; a reader that then waited for the socket to become readable
// (rather than for bytes to be there) would never see it. Small frames
// sent together leave the second in the read buffer, the socket empty:
// a reader that waited on the socket at all would never see that one.
// All must be answered, and so must a frame sent after the session has
// idled.
func TestWSFramesSentTogetherAreAllAnswered(t *testing.T) {
	g := startGateway(t)
	c, r := rawSession(t, strings.TrimPrefix(g.URL, "http://"), adminToken)
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	pub := func(id string) []byte {
		return maskedText(fmt.Appendf(nil, `{"op":"pub","id":%q,"subject":"idle.test","data":%q}`, id, strings.Repeat("x", 3*wsReadBuffer)))
	}
	if _, err := c.Write(append(pub("a"), pub("b")...)); err != nil {
		t.Fatal(err)
	}
	seen := readRawUntil(t, r, `"op":"ok"`, 2)
	for _, id := range []string{`"id":"a"`, `"id":"b"`} {
		if !bytes.Contains(seen, []byte(id)) {
			t.Fatalf("no answer with %s: %s", id, seen)
		}
	}
	// Small frames sent together land in the session's read buffer in
	// one read: the second is there with nothing left in the socket.
	small := func(id string) []byte {
		return maskedText(fmt.Appendf(nil, `{"op":"pub","id":%q,"subject":"idle.test","data":"x"}`, id))
	}
	if two := append(small("s1"), small("s2")...); len(two) > wsReadBuffer {
		t.Fatalf("two small frames take %d bytes, more than the read buffer's %d", len(two), wsReadBuffer)
	} else if _, err := c.Write(two); err != nil {
		t.Fatal(err)
	}
	seen = readRawUntil(t, r, `"op":"ok"`, 2)
	for _, id := range []string{`"id":"s1"`, `"id":"s2"`} {
		if !bytes.Contains(seen, []byte(id)) {
			t.Fatalf("no answer with %s: %s", id, seen)
		}
	}
	time.Sleep(50 * time.Millisecond) // the reader waits for the next bytes
	if _, err := c.Write(pub("c")); err != nil {
		t.Fatal(err)
	}
	if seen := readRawUntil(t, r, `"op":"ok"`, 1); !bytes.Contains(seen, []byte(`"id":"c"`)) {
		t.Fatalf("no answer to the frame after the pause: %s", seen)
	}
}
