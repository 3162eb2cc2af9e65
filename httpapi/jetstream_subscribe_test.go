package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natsgate/natsgate/bridge"
)

// jsAdmin is a native JetStream client with the admin token, for making
// streams and storing messages.
func (g *gateway) jsAdmin() jetstream.JetStream {
	g.t.Helper()
	js, err := jetstream.New(g.native(adminToken))
	if err != nil {
		g.t.Fatal(err)
	}
	return js
}

func mkStream(t testing.TB, js jetstream.JetStream, cfg jetstream.StreamConfig) jetstream.Stream {
	t.Helper()
	st, err := js.CreateStream(context.Background(), cfg)
	if err != nil {
		t.Fatalf("create stream %s: %v", cfg.Name, err)
	}
	return st
}

// store stores the messages of seqs from..to on subject, each payload
// "m<seq>" padded to size bytes; storeOn takes the subject of each seq.
func store(t testing.TB, js jetstream.JetStream, subject string, from, to, size int) {
	t.Helper()
	storeOn(t, js, func(int) string { return subject }, from, to, size)
}

func storeOn(t testing.TB, js jetstream.JetStream, subject func(i int) string, from, to, size int) {
	t.Helper()
	var acks []jetstream.PubAckFuture
	for i := from; i <= to; i++ {
		data := fmt.Appendf(nil, "m%d", i)
		if len(data) < size {
			data = append(data, strings.Repeat(".", size-len(data))...)
		}
		f, err := js.PublishAsync(subject(i), data)
		if err != nil {
			t.Fatalf("stored publish %d: %v", i, err)
		}
		acks = append(acks, f)
	}
	for i, f := range acks {
		select {
		case ack := <-f.Ok():
			if ack.Sequence != uint64(from+i) {
				t.Fatalf("message %d stored as seq %d", from+i, ack.Sequence)
			}
		case err := <-f.Err():
			t.Fatalf("stored publish %d: %v", from+i, err)
		case <-time.After(10 * time.Second):
			t.Fatal("no publish acknowledgement within 10s")
		}
	}
}

func consumerCount(t testing.TB, st jetstream.Stream) int {
	t.Helper()
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Consumers
}

func waitNoConsumers(t testing.TB, st jetstream.Stream) {
	t.Helper()
	waitFor(t, "the stream's consumers to be removed", func() bool { return consumerCount(t, st) == 0 })
}

// jsReader reads the message objects and notices of one subscription.
type jsReader interface {
	// next returns the next message object or notice (an object with an
	// "op"); SSE comments other than keep-alives come as {"comment":…}.
	next(t testing.TB) map[string]any
}

type sseReader struct{ s *sseStream }

// next skips NATS connection notices ({"op":"status","nats":…}).
func (r sseReader) next(t testing.TB) map[string]any {
	t.Helper()
	for {
		if obj := r.nextAny(t); obj["nats"] == nil {
			return obj
		}
	}
}

func (r sseReader) nextAny(t testing.TB) map[string]any {
	t.Helper()
	var id, event, data string
	for {
		l := r.s.next(t, func(string) bool { return true })
		switch {
		case l == "" && data != "":
			var obj map[string]any
			if err := json.Unmarshal([]byte(data), &obj); err != nil {
				t.Fatalf("SSE data %q: %v", data, err)
			}
			if op, ok := obj["op"]; ok {
				if event != "status" && op == "status" {
					t.Fatalf("status notice without event: status: %q", data)
				}
			} else if seq := fmt.Sprint(obj["seq"]); id != seq {
				t.Fatalf("SSE id %q for a message of seq %s", id, seq)
			}
			obj["sse_id"] = id
			return obj
		case l == ": keep-alive", l == ": subscribed", l == "":
		case strings.HasPrefix(l, ": "):
			return map[string]any{"comment": l[2:]}
		case strings.HasPrefix(l, "id: "):
			id = l[4:]
		case strings.HasPrefix(l, "event: "):
			event = l[7:]
		case strings.HasPrefix(l, "data: "):
			data = l[6:]
		default:
			t.Fatalf("unexpected SSE line %q", l)
		}
	}
}

type ndjsonReader struct{ s *sseStream }

func (r ndjsonReader) next(t testing.TB) map[string]any {
	t.Helper()
	for {
		l := r.s.next(t, func(l string) bool { return l != "" })
		var obj map[string]any
		if err := json.Unmarshal([]byte(l), &obj); err != nil {
			t.Fatalf("NDJSON line %q: %v", l, err)
		}
		if obj["nats"] == nil { // not a NATS connection notice
			return obj
		}
	}
}

type wsReader struct {
	w   *wsClient
	sid string
	ok  map[string]any // the sub frame's answer
}

func (r wsReader) next(t testing.TB) map[string]any {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case f, ok := <-r.w.frames:
			if !ok {
				t.Fatalf("session closed: %v", <-r.w.done)
			}
			if f["op"] == "status" && f["gap"] == nil {
				continue // NATS connection status
			}
			if f["sid"] != r.sid {
				t.Fatalf("frame %v, want one of sid %s", f, r.sid)
			}
			if f["op"] == "msg" {
				delete(f, "op")
				delete(f, "sid")
			}
			return f
		case <-timeout:
			t.Fatal("no frame within 5s")
		}
	}
}

var transports = []string{"sse", "ndjson", "ws"}

// jsSub opens a subscription on subject over transport: query for the
// HTTP ones (and hdr, name then value), fields for the WebSocket sub
// frame, answered with ok.
func (g *gateway) jsSub(t testing.TB, transport, token, subject, query string, fields map[string]any, hdr ...string) jsReader {
	t.Helper()
	path := "/v1/subscribe/" + subject
	if query != "" {
		path += "?" + query
	}
	switch transport {
	case "sse":
		s := g.stream(path, token, "", hdr...)
		if s.resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d", path, s.resp.StatusCode)
		}
		return sseReader{s}
	case "ndjson":
		s := g.stream(path, token, "application/x-ndjson", hdr...)
		if s.resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d", path, s.resp.StatusCode)
		}
		return ndjsonReader{s}
	}
	w := g.dialWS(token)
	w.next("connected")
	f := map[string]any{"op": "sub", "sid": "s1", "subject": subject}
	for k, v := range fields {
		f[k] = v
	}
	w.send(f)
	ok := w.next("ok")
	if ok["sid"] != "s1" {
		t.Fatalf("sub answered %v", ok)
	}
	return wsReader{w: w, sid: "s1", ok: ok}
}

// wantSeqs reads messages and checks their seqs, stream and payloads.
func wantSeqs(t testing.TB, r jsReader, stream string, seqs ...int) {
	t.Helper()
	for _, seq := range seqs {
		m := r.next(t)
		if m["seq"] != float64(seq) || m["stream"] != stream || !strings.HasPrefix(fmt.Sprint(m["data"]), fmt.Sprintf("m%d", seq)) {
			t.Fatalf("got %v, want the message of seq %d in %s", m, seq, stream)
		}
		if _, err := time.Parse(time.RFC3339Nano, fmt.Sprint(m["time"])); err != nil {
			t.Fatalf("time of %v: %v", m, err)
		}
	}
}

func TestJetStreamSubscriptionsStartWhereAsked(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream)
	js := g.jsAdmin()
	forms := []struct {
		name   string
		query  string
		fields func(third time.Time) map[string]any
		want   []int
		after  any // the WebSocket ok's seq: where the subscription starts after
	}{
		{"deliver=all", "deliver=all", func(time.Time) map[string]any { return map[string]any{"deliver": "all"} }, []int{1, 2, 3, 4, 5}, 0.0},
		{"deliver=last", "deliver=last", func(time.Time) map[string]any { return map[string]any{"deliver": "last"} }, []int{5}, 4.0},
		{"deliver=new", "deliver=new", func(time.Time) map[string]any { return map[string]any{"deliver": "new"} }, nil, 5.0},
		{"deliver=last_per_subject", "deliver=last_per_subject", func(time.Time) map[string]any { return map[string]any{"deliver": "last_per_subject"} }, []int{4, 5}, nil},
		{"start_seq", "start_seq=3", func(time.Time) map[string]any { return map[string]any{"start_seq": 3} }, []int{3, 4, 5}, 2.0},
		{"start_time", "", func(third time.Time) map[string]any {
			return map[string]any{"start_time": third.Format(time.RFC3339Nano)}
		}, []int{3, 4, 5}, 2.0},
	}
	n := 0
	for _, form := range forms {
		for _, transport := range transports {
			n++
			name, prefix := fmt.Sprintf("S%d", n), fmt.Sprintf("t%d", n)
			t.Run(form.name+"/"+transport, func(t *testing.T) {
				t.Parallel()
				st := mkStream(t, js, jetstream.StreamConfig{Name: name, Subjects: []string{prefix + ".>"}})
				// Seqs 1..5 alternate between two subjects; 6 comes later.
				subj := func(i int) string { return prefix + []string{".eu", ".us"}[(i+1)%2] }
				storeOn(t, js, subj, 1, 5, 0)
				third, err := st.GetMsg(context.Background(), 3)
				if err != nil {
					t.Fatal(err)
				}
				query := form.query
				if form.name == "start_time" {
					// An unescaped '+' in the offset is accepted too.
					query = "start_time=" + third.Time.In(time.FixedZone("", 3600)).Format(time.RFC3339Nano)
				}
				r := g.jsSub(t, transport, adminToken, prefix+".>", query, form.fields(third.Time))
				if ws, ok := r.(wsReader); ok && ws.ok["seq"] != form.after {
					t.Fatalf("sub answered %v, want seq %v", ws.ok, form.after)
				}
				wantSeqs(t, r, name, form.want...)
				storeOn(t, js, subj, 6, 6, 0)
				m := r.next(t)
				if m["seq"] != float64(6) || m["subject"] != prefix+".us" {
					t.Fatalf("after the stored ones, got %v; want seq 6", m)
				}
				stored, _ := st.GetMsg(context.Background(), 6)
				if tm, _ := time.Parse(time.RFC3339Nano, m["time"].(string)); !tm.Equal(stored.Time) || len(m["time"].(string)) != len("2006-01-02T15:04:05.000000000Z") {
					t.Fatalf("time %v, stored %v", m["time"], stored.Time)
				}
				if m["reply"] != nil {
					t.Fatalf("a JetStream message has a reply subject: %v", m)
				}
			})
		}
	}
}

func TestLastEventIDResumesAndOverridesTheURL(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream)
	js := g.jsAdmin()
	mkStream(t, js, jetstream.StreamConfig{Name: "RESUME", Subjects: []string{"resume.>"}})
	store(t, js, "resume.x", 1, 5, 0)
	for _, tc := range []struct {
		query, lastID string
		first         int
	}{
		{"deliver=all", "3", 4},
		{"", "3", 4}, // EventSource reconnecting to a URL without a start
		{"start_seq=1", "4", 5},
		{"start_time=2000-01-01T00:00:00Z", "0", 1},
		{"deliver=new", "2", 3},
	} {
		for _, transport := range []string{"sse", "ndjson"} {
			t.Run(tc.query+"/"+tc.lastID+"/"+transport, func(t *testing.T) {
				r := g.jsSub(t, transport, adminToken, "resume.>", tc.query, nil, "Last-Event-ID", tc.lastID)
				m := r.next(t)
				if m["seq"] != float64(tc.first) {
					t.Fatalf("first %v, want seq %d", m, tc.first)
				}
			})
		}
	}
	// On a subject no stream holds, a Last-Event-ID alone is ignored: a
	// core subscription.
	s := g.stream("/v1/subscribe/plain.x", adminToken, "", "Last-Event-ID", "7")
	if s.resp.StatusCode != 200 {
		t.Fatalf("status %d", s.resp.StatusCode)
	}
	s.next(t, func(l string) bool { return l == ": subscribed" })
	g.do("POST", "/v1/publish/plain.x", adminToken, strings.NewReader("core"))
	if l := s.next(t, func(l string) bool { return l != "" }); l != `data: {"subject":"plain.x","data":"core"}` {
		t.Fatalf("got %q, want a core message", l)
	}
}

func TestJetStreamGapIsToldFirst(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream)
	js := g.jsAdmin()
	// Five kept of ten stored: seqs 1..5 are gone.
	mkStream(t, js, jetstream.StreamConfig{Name: "GAP", Subjects: []string{"gap.>"}, MaxMsgs: 5})
	store(t, js, "gap.x", 1, 10, 0)
	old := time.Now().Add(-time.Hour).UTC()
	oldText := old.Format(time.RFC3339Nano)
	for _, transport := range transports {
		t.Run(transport, func(t *testing.T) {
			gapOf := func(m map[string]any) string {
				t.Helper()
				if m["op"] != "status" || m["gap"] == nil {
					t.Fatalf("got %v, want a gap notice", m)
				}
				b, _ := json.Marshal(m["gap"])
				return string(b)
			}
			r := g.jsSub(t, transport, adminToken, "gap.>", "start_seq=2", map[string]any{"start_seq": 2})
			if got := gapOf(r.next(t)); got != `{"first_seq":6,"requested_seq":2}` {
				t.Fatalf("gap %s", got)
			}
			wantSeqs(t, r, "GAP", 6, 7, 8, 9, 10)

			r = g.jsSub(t, transport, adminToken, "gap.>", "start_time="+url.QueryEscape(oldText), map[string]any{"start_time": oldText})
			if got, want := gapOf(r.next(t)), fmt.Sprintf(`{"first_seq":6,"requested_time":"%s"}`, bridge.FormatTime(old)); got != want {
				t.Fatalf("gap %s, want %s", got, want)
			}
			wantSeqs(t, r, "GAP", 6)

			if transport != "ws" {
				r = g.jsSub(t, transport, adminToken, "gap.>", "deliver=all", nil, "Last-Event-ID", "1")
				if got := gapOf(r.next(t)); got != `{"first_seq":6,"requested_seq":2}` {
					t.Fatalf("gap after Last-Event-ID 1: %s", got)
				}
				wantSeqs(t, r, "GAP", 6)
			}

			// From what exists: no notice.
			r = g.jsSub(t, transport, adminToken, "gap.>", "start_seq=6", map[string]any{"start_seq": 6})
			wantSeqs(t, r, "GAP", 6)
			r = g.jsSub(t, transport, adminToken, "gap.>", "deliver=all", map[string]any{"deliver": "all"})
			wantSeqs(t, r, "GAP", 6)

			// A purged stream: everything before its next message is gone,
			// by sequence and by time.
			name, subject := "PURGED_"+strings.ToUpper(transport), "purged."+transport
			ps := mkStream(t, js, jetstream.StreamConfig{Name: name, Subjects: []string{subject}})
			store(t, js, subject, 1, 3, 0)
			if err := ps.Purge(context.Background()); err != nil {
				t.Fatal(err)
			}
			r = g.jsSub(t, transport, adminToken, subject, "start_seq=1", map[string]any{"start_seq": 1})
			if got := gapOf(r.next(t)); got != `{"first_seq":4,"requested_seq":1}` {
				t.Fatalf("gap on a purged stream %s", got)
			}
			rt := g.jsSub(t, transport, adminToken, subject, "start_time="+url.QueryEscape(oldText), map[string]any{"start_time": oldText})
			if got := gapOf(rt.next(t)); !strings.HasPrefix(got, `{"first_seq":4,"requested_time":`) {
				t.Fatalf("time gap on a purged stream %s", got)
			}
			store(t, js, subject, 4, 4, 0)
			wantSeqs(t, r, name, 4)
			wantSeqs(t, rt, name, 4)
		})
	}
}

func TestJetStreamSubscribeBadInputsAre400(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream)
	js := g.jsAdmin()
	st := mkStream(t, js, jetstream.StreamConfig{Name: "BAD", Subjects: []string{"bad.>"}})
	store(t, js, "bad.x", 1, 2, 0)
	for _, tc := range []struct {
		query, lastID, detail string
	}{
		{"start_seq=0", "", "start_seq"},
		{"start_seq=-1", "", "start_seq"},
		{"start_seq=abc", "", "start_seq"},
		{"start_seq=", "", "start_seq"},
		{"start_seq=1.5", "", "start_seq"},
		{"deliver=first", "", "deliver"},
		{"deliver=", "", "deliver"},
		{"start_time=yesterday", "", "start_time"},
		{"start_time=2026-01-02", "", "start_time"},
		{"deliver=all&start_seq=1", "", "at most one"},
		{"start_seq=1&start_time=2026-01-02T00:00:00Z", "", "at most one"},
		{"queue=q&deliver=all", "", "queue"},
		{"queue=q", "3", "queue"},
		{"deliver=all", "x", "Last-Event-ID"},
		{"", "-1", "Last-Event-ID"},
		{"deliver=bogus", "3", "deliver"},
	} {
		path := "/v1/subscribe/bad.>?" + tc.query
		var hdr []string
		if tc.lastID != "" {
			hdr = []string{"Last-Event-ID", tc.lastID}
		}
		resp, body := g.do("GET", path, adminToken, nil, hdr...)
		wantProblem(t, resp, body, 400, tc.detail)
	}
	w := g.dialWS(adminToken)
	w.next("connected")
	for i, fields := range []map[string]any{
		{"start_seq": 0}, {"start_seq": -1}, {"start_seq": "abc"}, {"start_seq": "3"}, {"start_seq": 1.5},
		{"deliver": "first"}, {"deliver": 5}, {"start_time": "yesterday"}, {"start_time": 7},
		{"deliver": "all", "start_seq": 1}, {"deliver": "all", "queue": "q"},
	} {
		f := map[string]any{"op": "sub", "sid": fmt.Sprint("b", i), "subject": "bad.>"}
		for k, v := range fields {
			f[k] = v
		}
		w.send(f)
		if e := w.next("error"); e["status"] != float64(400) || e["sid"] != f["sid"] {
			t.Fatalf("sub %v answered %v, want error 400", fields, e)
		}
	}
	if n := consumerCount(t, st); n != 0 {
		t.Fatalf("bad requests left %d consumers", n)
	}
	// Nothing else was lost: the session goes on.
	w.send(map[string]any{"op": "sub", "sid": "good", "subject": "bad.>", "start_seq": 2})
	w.next("ok")
	wantSeqs(t, wsReader{w: w, sid: "good"}, "BAD", 2)
}

func TestJetStreamSubscribeWithoutAStream(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream)
	js := g.jsAdmin()
	mkStream(t, js, jetstream.StreamConfig{Name: "A", Subjects: []string{"a.>"}})
	mkStream(t, js, jetstream.StreamConfig{Name: "B", Subjects: []string{"b.>"}})
	resp, body := g.do("GET", "/v1/subscribe/none.>?deliver=all", adminToken, nil)
	wantProblem(t, resp, body, 404, "no stream holds")
	if !strings.Contains(string(body), "urn:natsgate:problem:no-stream") {
		t.Fatalf("problem %s, want kind no-stream", body)
	}
	resp, body = g.do("GET", "/v1/subscribe/>?start_seq=1", adminToken, nil)
	wantProblem(t, resp, body, 400, "A, B")
	if !strings.Contains(string(body), "urn:natsgate:problem:several-streams") {
		t.Fatalf("problem %s, want kind several-streams", body)
	}
	w := g.dialWS(adminToken)
	w.next("connected")
	w.send(map[string]any{"op": "sub", "sid": "n", "subject": "none.x", "deliver": "all"})
	if e := w.next("error"); e["status"] != float64(404) || e["sid"] != "n" {
		t.Fatalf("no stream: %v", e)
	}
	w.send(map[string]any{"op": "sub", "sid": "s", "subject": ">", "deliver": "all"})
	if e := w.next("error"); e["status"] != float64(400) || e["sid"] != "s" {
		t.Fatalf("several streams: %v", e)
	}
	// a.* is within stream A.
	w.send(map[string]any{"op": "sub", "sid": "a", "subject": "a.*", "deliver": "new"})
	w.next("ok")

	plain := startGateway(t)
	resp, body = plain.do("GET", "/v1/subscribe/a.>?deliver=all", adminToken, nil)
	wantProblem(t, resp, body, 503, "JetStream")
}

func TestJetStreamSubscribeForbiddenIsQuick403(t *testing.T) {
	t.Parallel()
	const readerToken = "reader-Tok3n-with-a-recognisable-SECRET"
	g := startGateway(t, withJetStream, func(o *gatewayOptions) {
		o.tokens = append(o.tokens, bridge.Token{Name: "reader", Token: readerToken,
			Publish:   &bridge.SubjectPermission{Allow: []string{"$JS.API.>"}},
			Subscribe: &bridge.SubjectPermission{Allow: []string{"orders.>", "_INBOX.>"}}})
	})
	js := g.jsAdmin()
	mkStream(t, js, jetstream.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.>"}})
	billing := mkStream(t, js, jetstream.StreamConfig{Name: "BILLING", Subjects: []string{"billing.>"}})
	store(t, js, "orders.eu", 1, 1, 0)
	store(t, js, "billing.eu", 1, 1, 0)
	for _, tc := range []struct{ name, token, subject string }{
		{"JetStream API", ordersToken, "orders.>"},
		{"subject", readerToken, "billing.>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			resp, body := g.do("GET", "/v1/subscribe/"+tc.subject+"?deliver=all", tc.token, nil)
			wantProblem(t, resp, body, 403, "")
			w := g.dialWS(tc.token)
			w.next("connected")
			w.send(map[string]any{"op": "sub", "sid": "f", "subject": tc.subject, "start_seq": 1})
			if e := w.next("error"); e["status"] != float64(403) || e["sid"] != "f" {
				t.Fatalf("WebSocket: %v", e)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("refusals took %v", d)
			}
		})
	}
	if n := consumerCount(t, billing); n != 0 {
		t.Fatalf("a refused subscription left %d consumers", n)
	}
	// What the reader may read, it reads.
	wantSeqs(t, g.jsSub(t, "sse", readerToken, "orders.>", "deliver=all", nil), "ORDERS", 1)
	wantSeqs(t, g.jsSub(t, "ws", readerToken, "orders.>", "", map[string]any{"deliver": "all"}), "ORDERS", 1)
}

// TestJetStreamSubscriptionsLeaveNoConsumers opens JetStream
// subscriptions and ends them every way they end: a stream's client goes,
// unsub, a session closes or drops, the gateway shuts down. Each time the
// stream's consumers go back to none; goroutines are checked by TestMain.
func TestJetStreamSubscriptionsLeaveNoConsumers(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream)
	js := g.jsAdmin()
	st := mkStream(t, js, jetstream.StreamConfig{Name: "LEAK", Subjects: []string{"leak.>"}})
	store(t, js, "leak.x", 1, 3, 0)
	// Warm up: the token's connection and its reply subscription, which
	// the JetStream API calls use, stay.
	warm := g.stream("/v1/subscribe/leak.>?deliver=all", adminToken, "")
	wantSeqs(t, sseReader{warm}, "LEAK", 1)
	warm.close()
	waitNoConsumers(t, st)
	waitFor(t, "the warm-up subscription to go", func() bool { return metricValue(t, g, "natsgate_jetstream_subscriptions") == 0 })
	subsBefore := g.serverSubs()
	nextOK := func(w *wsClient) {
		t.Helper()
		for {
			if f := w.next("msg", "ok"); f["op"] == "ok" {
				return
			}
		}
	}
	const n = 12
	open := func() (streams []*sseStream, sessions []*wsClient) {
		for i := range n {
			accept := ""
			if i%2 == 1 {
				accept = "application/x-ndjson"
			}
			s := g.stream("/v1/subscribe/leak.>?deliver=all", adminToken, accept)
			if s.resp.StatusCode != 200 {
				t.Fatalf("status %d", s.resp.StatusCode)
			}
			streams = append(streams, s)
			w := g.dialWS(adminToken)
			w.next("connected")
			for _, sid := range []string{"a", "b"} {
				w.send(map[string]any{"op": "sub", "sid": sid, "subject": "leak.>", "start_seq": 2})
				nextOK(w)
			}
			sessions = append(sessions, w)
		}
		waitFor(t, "every consumer", func() bool { return consumerCount(t, st) == 3*n })
		if got := metricValue(t, g, "natsgate_jetstream_subscriptions"); got != 3*n {
			t.Fatalf("natsgate_jetstream_subscriptions %v, want %d", got, 3*n)
		}
		return streams, sessions
	}
	streams, sessions := open()
	for i, s := range streams {
		s.close()
		w := sessions[i]
		w.send(map[string]any{"op": "unsub", "sid": "a"})
		nextOK(w)
		if i%2 == 0 {
			w.c.Close(websocket.StatusNormalClosure, "")
		} else {
			w.c.CloseNow()
		}
	}
	waitNoConsumers(t, st)
	waitFor(t, "the subscriptions to be gone", func() bool {
		return metricValue(t, g, "natsgate_jetstream_subscriptions") == 0 && metricValue(t, g, "natsgate_subscriptions") == 0
	})
	waitFor(t, "the server's subscriptions to be as before", func() bool { return g.serverSubs() == subsBefore })
	open()
	// Shutting down as cmd/gateway does: by the time the NATS connections
	// are closed, the consumers are gone.
	g.api.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.pool.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := consumerCount(t, st); n != 0 {
		t.Fatalf("%d consumers left after the gateway shut down", n)
	}
	created := metricValue(t, g, "natsgate_jetstream_consumers_created_total")
	waitFor(t, "every consumer counted removed", func() bool {
		return metricValue(t, g, "natsgate_jetstream_consumers_removed_total") == created
	})
	if created != 6*n+1 {
		t.Fatalf("consumers created %v, want %d", created, 6*n+1)
	}
}

// TestJetStreamSubscriptionsSurviveANATSRestart restarts the NATS server
// behind the gateway (as with --nats-url), keeping its store: the
// subscriptions' consumers are gone with it, and the ordered consumers
// recreate themselves from one past the last message delivered, on every
// transport: nothing lost, nothing repeated.
func TestJetStreamSubscriptionsSurviveANATSRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startGateway(t, withJetStream, func(o *gatewayOptions) {
		o.external = true
		o.storeDir = dir
		o.pool.ReconnectWait = 50 * time.Millisecond
	})
	js := g.jsAdmin()
	mkStream(t, js, jetstream.StreamConfig{Name: "DURABLE", Subjects: []string{"durable.>"}})
	store(t, js, "durable.x", 1, 5, 0)
	var readers []jsReader
	for _, transport := range transports {
		r := g.jsSub(t, transport, adminToken, "durable.>", "deliver=all", map[string]any{"deliver": "all"})
		wantSeqs(t, r, "DURABLE", 1, 2, 3, 4, 5)
		readers = append(readers, r)
	}
	addr := strings.TrimPrefix(g.e.ClientURL(), "nats://")
	_ = g.e.Shutdown(context.Background())
	waitFor(t, "the gateway to lose NATS", func() bool { r, _ := g.do("GET", "/readyz", "", nil); return r.StatusCode == 503 })
	e2, err := bridge.StartEmbedded(bridge.EmbeddedConfig{Listen: addr, Tokens: testTokens(), JetStream: true, StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e2.Shutdown(context.Background()) })
	nc, err := nats.Connect(e2.ClientURL(), nats.Token(adminToken))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js2, _ := jetstream.New(nc)
	store(t, js2, "durable.x", 6, 10, 0)
	start := time.Now()
	for i, r := range readers {
		wantSeqs(t, r, "DURABLE", 6, 7, 8, 9, 10)
		t.Logf("%s: resumed after %v", transports[i], time.Since(start))
	}
	store(t, js2, "durable.x", 11, 11, 0)
	for _, r := range readers {
		wantSeqs(t, r, "DURABLE", 11)
	}
}

// smallReadBuffer is an HTTP client whose connections have a 128 KiB
// receive buffer, so a client that stops reading blocks the gateway's
// writes soon (see NATS-NOTES.md on slower buffers).
func smallReadBuffer(t testing.TB) *http.Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			_ = c.(*net.TCPConn).SetReadBuffer(128 << 10)
		}
		return c, err
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// rawJSSession opens a WebSocket session over client and subscribes sid
// "p" to subject with fields, reading up to the ok.
func (g *gateway) rawJSSession(t testing.TB, client *http.Client, subject string, fields map[string]any) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(g.URL, "http")+"/v1/ws",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + adminToken}}, HTTPClient: client})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	c.SetReadLimit(-1)
	f := map[string]any{"op": "sub", "sid": "p", "subject": subject}
	for k, v := range fields {
		f[k] = v
	}
	b, _ := json.Marshal(f)
	if err := c.Write(context.Background(), websocket.MessageText, b); err != nil {
		t.Fatal(err)
	}
	readUntil(t, c, `"op":"ok"`)
	return c
}

// seqReader reads a JetStream subscription's messages one at a time,
// over WebSocket or SSE, with no reading ahead beyond the socket's own.
type seqReader interface {
	// read returns the next message's seq, or 0 and what ended the
	// subscription: a close error, or the stream's last notice.
	read() (seq int, end string)
}

type wsSeqReader struct{ c *websocket.Conn }

func (r wsSeqReader) read() (int, string) {
	for {
		_, b, err := r.c.Read(context.Background())
		if err != nil {
			return 0, fmt.Sprint(websocket.CloseStatus(err), " ", err)
		}
		var f struct {
			Op  string
			Seq int
		}
		if json.Unmarshal(b, &f) != nil {
			return 0, "bad frame " + string(b)
		}
		switch f.Op {
		case "msg":
			return f.Seq, ""
		case "status":
			if strings.Contains(string(b), `"gap"`) {
				return 0, string(b)
			}
		default:
			return 0, string(b)
		}
	}
}

type sseSeqReader struct{ br *bufio.Reader }

func (r sseSeqReader) read() (int, string) {
	for {
		l, err := r.br.ReadString('\n')
		if err != nil {
			return 0, "EOF " + err.Error()
		}
		l = strings.TrimSuffix(l, "\n")
		switch {
		case strings.HasPrefix(l, "id: "):
			seq, _ := strconv.Atoi(l[4:])
			return seq, ""
		case l == "", l == ": subscribed", l == ": keep-alive", strings.HasPrefix(l, "data: "):
		default:
			return 0, l
		}
	}
}

// openPaced subscribes over transport with a small receive buffer.
func (g *gateway) openPaced(t testing.TB, transport, subject string, startSeq int, lastID string) seqReader {
	t.Helper()
	client := smallReadBuffer(t)
	if transport == "ws" {
		return wsSeqReader{g.rawJSSession(t, client, subject, map[string]any{"start_seq": startSeq})}
	}
	req, _ := http.NewRequest("GET", g.URL+"/v1/subscribe/"+subject+"?start_seq="+strconv.Itoa(startSeq), nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	return sseSeqReader{bufio.NewReaderSize(resp.Body, 4096)}
}

// TestJetStreamSlowReaderIsPacedNotDropped stores 8 MiB and lets a
// client fall behind through a 16 KiB queue: where a core subscription
// would drop, the JetStream one waits for the reader, who gets every
// message once, in order, and no drop notice.
func TestJetStreamSlowReaderIsPacedNotDropped(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream, func(o *gatewayOptions) {
		o.cfg.QueueBytes = 16 << 10
		o.cfg.SlowConsumerGrace = time.Minute
	})
	js := g.jsAdmin()
	const n = 2000
	for _, transport := range []string{"ws", "sse"} {
		subject := "pace." + transport
		mkStream(t, js, jetstream.StreamConfig{Name: "PACE_" + strings.ToUpper(transport), Subjects: []string{subject}})
		store(t, js, subject, 1, n, 4<<10)
		waitsBefore := metricValue(t, g, "natsgate_jetstream_paced_waits_total")
		r := g.openPaced(t, transport, subject, 1, "")
		// Behind from the start: not reading until the gateway waits.
		deadline := time.Now().Add(30 * time.Second)
		for metricValue(t, g, "natsgate_jetstream_paced_waits_total") == waitsBefore {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the gateway never waited for a client that did not read", transport)
			}
			time.Sleep(10 * time.Millisecond)
		}
		for want := 1; want <= n; want++ {
			seq, end := r.read()
			if seq != want {
				t.Fatalf("%s: got seq %d (%s), want %d", transport, seq, end, want)
			}
			if want%8 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}
	if d := metricValue(t, g, `natsgate_messages_dropped_total{transport="ws"}`) + metricValue(t, g, `natsgate_messages_dropped_total{transport="sse"}`); d != 0 {
		t.Fatalf("%v messages dropped", d)
	}
}

// TestJetStreamStalledClientIsClosedAndResumes stops reading: after the
// slow-consumer grace the client is closed (1008; an SSE stream ends with
// the notice) and a resume from one past its last seq gets the rest, with
// no gap and no duplicate.
func TestJetStreamStalledClientIsClosedAndResumes(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream, func(o *gatewayOptions) {
		o.cfg.QueueBytes = 16 << 10
		o.cfg.SlowConsumerGrace = time.Second // short, yet more than a loaded machine pauses a reader
	})
	js := g.jsAdmin()
	// 8 MiB: more than the socket buffers between gateway and client hold.
	const n = 2000
	for _, transport := range []string{"ws", "sse"} {
		subject := "stall." + transport
		st := mkStream(t, js, jetstream.StreamConfig{Name: "STALL_" + strings.ToUpper(transport), Subjects: []string{subject}})
		store(t, js, subject, 1, n, 4<<10)
		r := g.openPaced(t, transport, subject, 1, "")
		// Not reading until the gateway has given up on the client.
		closed := fmt.Sprintf(`natsgate_slow_consumers_closed_total{transport="%s"}`, transport)
		deadline := time.Now().Add(30 * time.Second)
		for metricValue(t, g, closed) == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%s: a client reading nothing was not closed within 30s", transport)
			}
			time.Sleep(20 * time.Millisecond)
		}
		last := 0
		var end string
		for last < n {
			seq, e := r.read()
			if seq == 0 {
				end = e
				break
			}
			if seq != last+1 {
				t.Fatalf("%s: seq %d after %d", transport, seq, last)
			}
			last = seq
		}
		if last == n || !strings.Contains(end, "slow consumer") {
			t.Fatalf("%s: read %d of %d, then %q; want closed as a slow consumer before the end", transport, last, n, end)
		}
		if transport == "ws" && !strings.HasPrefix(end, "StatusPolicyViolation") {
			t.Fatalf("closed with %q, want 1008", end)
		}
		t.Logf("%s: stalled after %d of %d: %s", transport, last, n, end)
		waitNoConsumers(t, st)

		lastID := ""
		if transport == "sse" {
			lastID = strconv.Itoa(last) // overrides start_seq=1
		}
		r = g.openPaced(t, transport, subject, last+1, lastID)
		for want := last + 1; want <= n; want++ {
			if seq, e := r.read(); seq != want {
				t.Fatalf("%s resumed: got seq %d (%s), want %d", transport, seq, e, want)
			}
		}
		store(t, js, subject, n+1, n+1, 0)
		if seq, e := r.read(); seq != n+1 {
			t.Fatalf("%s resumed: got seq %d (%s) after the last, want %d", transport, seq, e, n+1)
		}
	}
}

// streamEnds waits for an HTTP stream to end.
func streamEnds(t testing.TB, s *sseStream) {
	t.Helper()
	if l, ok := s.nextOrEnd(t, func(l string) bool { return l != "" && l != ": keep-alive" }); ok {
		t.Fatalf("line %q after the stream's last notice", l)
	}
}

// wantEnded reads the end of a feed whose stream (bucket) went: a 404
// with msg, as an SSE comment, an NDJSON error notice or a WebSocket
// error frame for the feed's sid; the HTTP streams then end.
func wantEnded(t testing.TB, r jsReader, msg string) {
	t.Helper()
	end := r.next(t)
	switch r.(type) {
	case sseReader, kvSSEReader:
		if end["comment"] != msg {
			t.Fatalf("got %v, want the comment %q", end, msg)
		}
	case wsReader, kvWSReader:
		if end["op"] != "error" || end["status"] != float64(404) || end["message"] != msg || end["id"] != nil {
			t.Fatalf("got %v, want a 404 error frame saying %q", end, msg)
		}
		return
	case ndjsonReader:
		if end["op"] != "error" || end["status"] != float64(404) || end["message"] != msg {
			t.Fatalf("got %v, want a 404 error notice saying %q", end, msg)
		}
	}
	var s *sseStream
	switch r := r.(type) {
	case sseReader:
		s = r.s
	case kvSSEReader:
		s = r.s
	case ndjsonReader:
		s = r.s
	}
	streamEnds(t, s)
}

// wantFeedsGone waits for the gateway's feeds to end and checks that
// the account holds no consumer.
func wantFeedsGone(t testing.TB, g *gateway) {
	t.Helper()
	waitFor(t, "the feeds to end", func() bool { return metricValue(t, g, "natsgate_jetstream_subscriptions") == 0 })
	ai, err := g.jsAdmin().AccountInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if ai.Consumers != 0 {
		t.Fatalf("%d consumers left", ai.Consumers)
	}
}

// TestJetStreamSubscriptionEndsWhenItsStreamIsDeleted deletes the stream
// under a subscription on each transport: the client is told (404; on
// SSE a comment, as its other errors), the HTTP streams end, and no
// consumer is left.
func TestJetStreamSubscriptionEndsWhenItsStreamIsDeleted(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream)
	js := g.jsAdmin()
	t.Run("transports", func(t *testing.T) {
		for _, transport := range transports {
			t.Run(transport, func(t *testing.T) {
				t.Parallel()
				name, subject := "GONE_"+strings.ToUpper(transport), "gone"+transport
				mkStream(t, js, jetstream.StreamConfig{Name: name, Subjects: []string{subject + ".>"}})
				store(t, js, subject+".x", 1, 2, 0)
				r := g.jsSub(t, transport, adminToken, subject+".>", "deliver=all", map[string]any{"deliver": "all"})
				wantSeqs(t, r, name, 1, 2)
				if err := js.DeleteStream(context.Background(), name); err != nil {
					t.Fatal(err)
				}
				wantEnded(t, r, "no such stream: stream "+name+" was deleted")
			})
		}
	})
	wantFeedsGone(t, g)
}

// TestEndedFeedsFreeTheirSids ends a JetStream subscription and a watch
// by deleting their stream and bucket, in a session allowed two
// subscriptions: once told, the client makes new ones with the same sids,
// and has its two places, without an unsub.
func TestEndedFeedsFreeTheirSids(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream, func(o *gatewayOptions) { o.cfg.WS.MaxSubscriptions = 2 })
	js := g.jsAdmin()
	mkStream(t, js, jetstream.StreamConfig{Name: "FREED", Subjects: []string{"freed.>"}})
	store(t, js, "freed.x", 1, 1, 0)
	g.mkBucket("freed", "")
	if resp, body := g.do("PUT", "/v1/kv/freed/a", adminToken, strings.NewReader("1")); resp.StatusCode != 200 {
		t.Fatalf("put: %d %s", resp.StatusCode, body)
	}
	w := g.dialWS(adminToken)
	w.next("connected")
	w.send(map[string]any{"op": "sub", "sid": "s1", "subject": "freed.>", "deliver": "all"})
	w.next("ok")
	w.next("msg")
	w.send(map[string]any{"op": "watch", "sid": "w1", "bucket": "freed"})
	w.next("ok")
	w.next("kv")
	if err := js.DeleteStream(context.Background(), "FREED"); err != nil {
		t.Fatal(err)
	}
	if resp, body := g.do("DELETE", "/v1/kvm/buckets/freed", adminToken, nil); resp.StatusCode != 204 {
		t.Fatalf("deleting the bucket: %d %s", resp.StatusCode, body)
	}
	for range 2 {
		if f := w.next("error"); f["status"] != float64(404) || f["sid"] != "s1" && f["sid"] != "w1" {
			t.Fatalf("got %v, want a 404 for s1 or w1", f)
		}
	}
	mkStream(t, js, jetstream.StreamConfig{Name: "FREED2", Subjects: []string{"freed.>"}})
	g.mkBucket("freed2", "")
	w.send(map[string]any{"op": "sub", "sid": "s1", "subject": "freed.>", "deliver": "all", "id": "a"})
	w.send(map[string]any{"op": "watch", "sid": "w1", "bucket": "freed2", "id": "b"})
	for _, id := range []string{"a", "b"} {
		if f := w.next("ok", "error"); f["op"] != "ok" || f["id"] != id {
			t.Fatalf("got %v, want ok for %s", f, id)
		}
	}
	w.send(map[string]any{"op": "sub", "sid": "s3", "subject": "core.x", "id": "c"})
	if f := w.next("error"); f["status"] != float64(429) || f["id"] != "c" {
		t.Fatalf("got %v, want 429: the two places are taken again", f)
	}
	waitFor(t, "two subscriptions counted", func() bool { return metricValue(t, g, "natsgate_subscriptions") == 2 })
}
