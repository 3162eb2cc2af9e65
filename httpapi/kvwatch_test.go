package httpapi

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natsgate/natsgate/bridge"
)

// watchToken may watch (and write) the bucket "cfg" only: the JetStream
// API, $KV.cfg.> both ways, and replies.
const watchToken = "watch-Tok3n-with-a-recognisable-SECRET"

func withWatchToken(o *gatewayOptions) {
	o.tokens = append(o.tokens, bridge.Token{Name: "watch", Token: watchToken,
		Publish:   &bridge.SubjectPermission{Allow: []string{"$JS.API.>", "$KV.cfg.>"}},
		Subscribe: &bridge.SubjectPermission{Allow: []string{"$KV.cfg.>", "_INBOX.>"}}})
}

// startWatch is a test gateway with JetStream, the watch token and the
// bucket "cfg" made with config (JSON; empty for the defaults).
func startWatch(t *testing.T, config string, opts ...func(*gatewayOptions)) *gateway {
	t.Helper()
	g := startGateway(t, append([]func(*gatewayOptions){withJetStream, withWatchToken}, opts...)...)
	if resp, body := g.do("POST", "/v1/kvm/buckets/cfg", adminToken, strings.NewReader(config)); resp.StatusCode != 201 {
		t.Fatalf("creating the bucket: %d %s", resp.StatusCode, body)
	}
	return g
}

// mkBucket makes a bucket with config (JSON; empty for the defaults).
func (g *gateway) mkBucket(bucket, config string) {
	g.t.Helper()
	if resp, body := g.do("POST", "/v1/kvm/buckets/"+bucket, adminToken, strings.NewReader(config)); resp.StatusCode != 201 {
		g.t.Fatalf("creating bucket %s: %d %s", bucket, resp.StatusCode, body)
	}
}

// kvStream is the bucket's stream, for counting its consumers.
func (g *gateway) kvStream(bucket string) jetstream.Stream {
	g.t.Helper()
	st, err := g.jsAdmin().Stream(context.Background(), "KV_"+bucket)
	if err != nil {
		g.t.Fatal(err)
	}
	return st
}

// kvSSEReader reads a watch's SSE events: entries (whose id must be their
// revision, kept as "sse_id") and notices.
type kvSSEReader struct{ s *sseStream }

func (r kvSSEReader) next(t testing.TB) map[string]any {
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
			switch {
			case obj["nats"] != nil: // the NATS connection's status
				id, event, data = "", "", ""
				continue
			case obj["op"] == "status" && event != "status":
				t.Fatalf("status notice without event: status: %q", data)
			case obj["op"] == nil && id != fmt.Sprint(obj["revision"]):
				t.Fatalf("SSE id %q for an entry of revision %v", id, obj["revision"])
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

// kvWSReader reads a watch's frames of one sid: kv frames come as their
// entry (op and sid removed), notices as they are.
type kvWSReader struct {
	w   *wsClient
	sid string
}

func (r kvWSReader) next(t testing.TB) map[string]any {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case f, ok := <-r.w.frames:
			if !ok {
				t.Fatalf("session closed: %v", <-r.w.done)
			}
			if f["op"] == "status" && f["nats"] != nil {
				continue
			}
			if f["sid"] != r.sid {
				t.Fatalf("frame %v, want one of sid %s", f, r.sid)
			}
			if f["op"] == "kv" {
				delete(f, "op")
				delete(f, "sid")
			}
			return f
		case <-timeout:
			t.Fatal("no frame within 5s")
		}
	}
}

// watch opens a watch of bucket over transport: query for the HTTP ones
// (and hdr, name then value), fields for the WebSocket watch frame (sid
// w1), answered with ok.
func (g *gateway) watch(t testing.TB, transport, token, bucket, query string, fields map[string]any, hdr ...string) jsReader {
	t.Helper()
	path := "/v1/kvm/buckets/" + bucket + "/watch"
	if query != "" {
		path += "?" + query
	}
	switch transport {
	case "sse", "ndjson":
		accept := ""
		if transport == "ndjson" {
			accept = "application/x-ndjson"
		}
		s := g.stream(path, token, accept, hdr...)
		if s.resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d", path, s.resp.StatusCode)
		}
		if transport == "ndjson" {
			return ndjsonReader{s}
		}
		return kvSSEReader{s}
	}
	w := g.dialWS(token)
	w.next("connected")
	f := map[string]any{"op": "watch", "sid": "w1", "bucket": bucket}
	for k, v := range fields {
		f[k] = v
	}
	w.send(f)
	if ok := w.next("ok"); ok["sid"] != "w1" {
		t.Fatalf("watch answered %v", ok)
	}
	return kvWSReader{w: w, sid: "w1"}
}

// wantEntry reads the next entry and checks it: key, revision, operation
// and, for PUT, the value; it returns the entry.
func wantEntry(t testing.TB, r jsReader, key string, rev int, op, value string) map[string]any {
	t.Helper()
	e := r.next(t)
	if e["bucket"] == nil || e["key"] != key || e["revision"] != float64(rev) || e["operation"] != op {
		t.Fatalf("got %v, want the %s of %s at revision %d", e, op, key, rev)
	}
	if _, err := time.Parse(time.RFC3339Nano, fmt.Sprint(e["created"])); err != nil {
		t.Fatalf("created of %v: %v", e, err)
	}
	_, hasData := e["data"]
	_, hasB64 := e["data_base64"]
	switch {
	case op != bridge.KVPut && (hasData || hasB64):
		t.Fatalf("a %s entry with data: %v", op, e)
	case op == bridge.KVPut && e["data"] != value:
		t.Fatalf("got %v, want the value %q", e, value)
	}
	return e
}

// wantCurrent reads the caught-up notice.
func wantCurrent(t testing.TB, r jsReader) {
	t.Helper()
	if n := r.next(t); n["op"] != "status" || n["kv"] != "current" {
		t.Fatalf("got %v, want the notice {op:status,kv:current}", n)
	}
}

// TestKVWatchIncludeModes watches a bucket whose keys have a history, on
// each transport: lastValue (the default) gives each key's latest entry,
// a delete marker included; allHistory every entry kept; updatesOnly
// nothing old. Each then says it is current and follows new changes.
func TestKVWatchIncludeModes(t *testing.T) {
	t.Parallel()
	g := startWatch(t, "")
	for _, transport := range transports {
		t.Run(transport, func(t *testing.T) {
			b := "modes_" + transport
			g.mkBucket(b, `{"history":5}`)
			g.mustPut("/v1/kv/"+b+"/a", "a1")                                                            // 1
			g.mustPut("/v1/kv/"+b+"/b", "b1")                                                            // 2
			g.mustPut("/v1/kv/"+b+"/a", "a2")                                                            // 3
			if resp, body := g.do("DELETE", "/v1/kv/"+b+"/b", adminToken, nil); resp.StatusCode != 204 { // 4
				t.Fatalf("delete: %d %s", resp.StatusCode, body)
			}
			g.mustPut("/v1/kv/"+b+"/c.x", "c1") // 5

			last := g.watch(t, transport, adminToken, b, "", nil)
			wantEntry(t, last, "a", 3, "PUT", "a2")
			wantEntry(t, last, "b", 4, "DEL", "")
			wantEntry(t, last, "c.x", 5, "PUT", "c1")
			wantCurrent(t, last)
			named := g.watch(t, transport, adminToken, b, "include=lastValue", map[string]any{"include": "lastValue", "filter": ">"})
			wantEntry(t, named, "a", 3, "PUT", "a2")
			wantEntry(t, named, "b", 4, "DEL", "")
			wantEntry(t, named, "c.x", 5, "PUT", "c1")
			wantCurrent(t, named)
			all := g.watch(t, transport, adminToken, b, "include=allHistory", map[string]any{"include": "allHistory"})
			wantEntry(t, all, "a", 1, "PUT", "a1")
			wantEntry(t, all, "b", 2, "PUT", "b1")
			wantEntry(t, all, "a", 3, "PUT", "a2")
			wantEntry(t, all, "b", 4, "DEL", "")
			wantEntry(t, all, "c.x", 5, "PUT", "c1")
			wantCurrent(t, all)
			updates := g.watch(t, transport, adminToken, b, "include=updatesOnly", map[string]any{"include": "updatesOnly"})
			wantCurrent(t, updates)
			filtered := g.watch(t, transport, adminToken, b, "filter=c.*", map[string]any{"filter": "c.*"})
			wantEntry(t, filtered, "c.x", 5, "PUT", "c1")
			wantCurrent(t, filtered)

			g.mustPut("/v1/kv/"+b+"/a", "new")
			for _, r := range []jsReader{last, named, all, updates} {
				wantEntry(t, r, "a", 6, "PUT", "new")
			}
			g.mustPut("/v1/kv/"+b+"/c.y", "cy")
			for _, r := range []jsReader{last, named, all, updates, filtered} {
				wantEntry(t, r, "c.y", 7, "PUT", "cy")
			}
		})
	}
}

// TestKVWatchIgnoreDeletesLeavesOutMarkersButStillSaysCurrent: the latest
// entries are delete and purge markers, which ignoreDeletes leaves out;
// the caught-up notice still comes, and later markers are left out too.
func TestKVWatchIgnoreDeletesLeavesOutMarkersButStillSaysCurrent(t *testing.T) {
	t.Parallel()
	g := startWatch(t, "")
	for _, transport := range transports {
		t.Run(transport, func(t *testing.T) {
			b := "ignore_" + transport
			// History 5: with history 1, revision 5 (then 6) is gone from
			// the stream once 6 (7) replaces it, and a watch that had not
			// read it yet rightly never sees it.
			g.mkBucket(b, `{"history":5}`)
			g.mustPut("/v1/kv/"+b+"/a", "a1")                            // 1
			g.mustPut("/v1/kv/"+b+"/b", "b1")                            // 2
			g.do("DELETE", "/v1/kv/"+b+"/a", adminToken, nil)            // 3
			g.do("DELETE", "/v1/kv/"+b+"/b?purge=true", adminToken, nil) // 4
			r := g.watch(t, transport, adminToken, b, "ignoreDeletes=true", map[string]any{"ignoreDeletes": true})
			wantCurrent(t, r)
			with := g.watch(t, transport, adminToken, b, "ignoreDeletes=false", map[string]any{"ignoreDeletes": false})
			wantEntry(t, with, "a", 3, "DEL", "")
			wantEntry(t, with, "b", 4, "PURGE", "")
			wantCurrent(t, with)
			g.mustPut("/v1/kv/"+b+"/c", "c1")                 // 5
			g.do("DELETE", "/v1/kv/"+b+"/c", adminToken, nil) // 6
			g.mustPut("/v1/kv/"+b+"/c", "c2")                 // 7
			wantEntry(t, r, "c", 5, "PUT", "c1")
			wantEntry(t, r, "c", 7, "PUT", "c2")
			wantEntry(t, with, "c", 5, "PUT", "c1")
			wantEntry(t, with, "c", 6, "DEL", "")
			wantEntry(t, with, "c", 7, "PUT", "c2")
		})
	}
}

// TestKVWatchEntriesAsTheContractHasThem: DEL and PURGE entries carry no
// data, a binary value comes as data_base64, and the entry's fields are
// the entry object's.
func TestKVWatchEntriesAsTheContractHasThem(t *testing.T) {
	t.Parallel()
	g := startWatch(t, `{"history":3}`)
	for _, transport := range transports {
		t.Run(transport, func(t *testing.T) {
			r := g.watch(t, transport, watchToken, "cfg", "include=updatesOnly", map[string]any{"include": "updatesOnly"})
			wantCurrent(t, r)
			key := "k." + transport
			rev := g.mustPut("/v1/kv/cfg/"+key, "\xff\x00bin")
			e := r.next(t)
			if e["key"] != key || e["revision"] != float64(rev) || e["data"] != nil || e["operation"] != "PUT" ||
				e["data_base64"] != base64.StdEncoding.EncodeToString([]byte("\xff\x00bin")) || e["bucket"] != "cfg" || e["delta"] != float64(0) {
				t.Fatalf("binary entry %v", e)
			}
			g.do("DELETE", "/v1/kv/cfg/"+key, adminToken, nil)
			wantEntry(t, r, key, int(rev)+1, "DEL", "")
			g.do("DELETE", "/v1/kv/cfg/"+key+"?purge=true", adminToken, nil)
			wantEntry(t, r, key, int(rev)+2, "PURGE", "")
		})
	}
}

// TestKVWatchCurrentAtOnceOnAnEmptyBucketAndAgainAfterResuming: an empty
// bucket is current at once; a watch resumed at a revision (resumeRevision,
// or Last-Event-ID, which overrides include and resumeRevision) gets
// every entry from it on, then the notice again.
func TestKVWatchCurrentAtOnceOnAnEmptyBucketAndAgainAfterResuming(t *testing.T) {
	t.Parallel()
	g := startWatch(t, `{"history":10}`)
	for _, transport := range transports {
		empty := g.watch(t, transport, watchToken, "cfg", "", nil)
		wantCurrent(t, empty)
	}
	for i := 1; i <= 4; i++ {
		g.mustPut("/v1/kv/cfg/k", "v"+strconv.Itoa(i))
	}
	for _, transport := range transports {
		t.Run(transport, func(t *testing.T) {
			r := g.watch(t, transport, watchToken, "cfg", "resumeRevision=2", map[string]any{"resumeRevision": 2})
			wantEntry(t, r, "k", 2, "PUT", "v2")
			wantEntry(t, r, "k", 3, "PUT", "v3")
			wantEntry(t, r, "k", 4, "PUT", "v4")
			wantCurrent(t, r)
			if transport == "ws" {
				return
			}
			// EventSource's reconnect: Last-Event-ID says 2 was the last.
			r = g.watch(t, transport, watchToken, "cfg", "include=updatesOnly&resumeRevision=4", nil, "Last-Event-ID", "2")
			wantEntry(t, r, "k", 3, "PUT", "v3")
			wantEntry(t, r, "k", 4, "PUT", "v4")
			wantCurrent(t, r)
		})
	}
	// Past the end: nothing to send, current at once, then what comes.
	for _, transport := range transports {
		r := g.watch(t, transport, watchToken, "cfg", "resumeRevision=99", map[string]any{"resumeRevision": 99})
		wantCurrent(t, r)
	}
}

// TestKVWatchBadInputs: every refusal before a consumer is made, HTTP
// and WebSocket alike.
func TestKVWatchBadInputs(t *testing.T) {
	t.Parallel()
	g := startWatch(t, "")
	cases := []struct {
		query  string
		fields map[string]any
		hdr    []string
		status int
		kind   string
	}{
		{"include=everything", map[string]any{"include": "everything"}, nil, 400, "bad-request"},
		{"resumeRevision=abc", map[string]any{"resumeRevision": "abc"}, nil, 400, "bad-request"},
		{"resumeRevision=0", map[string]any{"resumeRevision": 0}, nil, 400, "bad-request"},
		{"resumeRevision=-1", map[string]any{"resumeRevision": -1}, nil, 400, "bad-request"},
		{"ignoreDeletes=maybe", map[string]any{"ignoreDeletes": "maybe"}, nil, 400, "bad-request"},
		{"filter=a..b", map[string]any{"filter": "a..b"}, nil, 400, "bad-key"},
		{"filter=a.>.b", map[string]any{"filter": "a.>.b"}, nil, 400, "bad-key"},
		{"filter=", nil, nil, 400, "bad-key"},
		{"filter=a&filter=b", nil, nil, 400, "bad-request"},
		{"", nil, []string{"Last-Event-ID", "seven"}, 400, "bad-request"},
	}
	for _, tc := range cases {
		resp, body := g.do("GET", "/v1/kvm/buckets/cfg/watch?"+tc.query, watchToken, nil, tc.hdr...)
		wantKind(t, resp, body, tc.status, tc.kind)
	}
	for _, bucket := range []string{"a.b", "b%20c", "x*"} {
		resp, body := g.do("GET", "/v1/kvm/buckets/"+bucket+"/watch", adminToken, nil)
		wantKind(t, resp, body, 400, "bad-key")
	}
	resp, body := g.do("GET", "/v1/kvm/buckets/nope/watch", adminToken, nil)
	wantKind(t, resp, body, 404, "no-bucket")
	// A stream that is not a bucket's is no bucket either.
	mkStream(t, g.jsAdmin(), jetstream.StreamConfig{Name: "KV_fake", Subjects: []string{"$KV.fake.>"}})
	resp, body = g.do("GET", "/v1/kvm/buckets/fake/watch", adminToken, nil)
	wantKind(t, resp, body, 404, "no-bucket")

	w := g.dialWS(adminToken)
	w.next("connected")
	for i, tc := range cases {
		if tc.fields == nil {
			continue
		}
		f := map[string]any{"op": "watch", "sid": fmt.Sprint("w", i), "bucket": "cfg"}
		for k, v := range tc.fields {
			f[k] = v
		}
		w.send(f)
		if e := w.next("error"); e["status"] != float64(tc.status) || e["sid"] != f["sid"] {
			t.Errorf("watch %v answered %v, want error %d", tc.fields, e, tc.status)
		}
	}
	for bucket, status := range map[string]float64{"a.b": 400, "": 400, "nope": 404, "fake": 404} {
		w.send(map[string]any{"op": "watch", "sid": "b", "bucket": bucket})
		if e := w.next("error"); e["status"] != status {
			t.Errorf("watch of bucket %q answered %v, want error %v", bucket, e, status)
		}
	}
	w.send(map[string]any{"op": "watch", "bucket": "cfg"})
	if e := w.next("error"); e["status"] != float64(400) || !strings.Contains(fmt.Sprint(e["message"]), "sid") {
		t.Errorf("watch without a sid answered %v", e)
	}
	if n := consumerCount(t, g.kvStream("cfg")); n != 0 {
		t.Fatalf("%d consumers after refused watches", n)
	}
}

// TestKVWatchForbiddenIsQuick403: a token without subscribe rights on
// the bucket's subjects, or without the JetStream API, is refused at
// once, on every transport.
func TestKVWatchForbiddenIsQuick403(t *testing.T) {
	t.Parallel()
	g := startWatch(t, "")
	if resp, body := g.do("POST", "/v1/kvm/buckets/other", adminToken, nil); resp.StatusCode != 201 {
		t.Fatalf("create other: %d %s", resp.StatusCode, body)
	}
	for _, tc := range []struct{ token, bucket string }{{watchToken, "other"}, {ordersToken, "cfg"}, {ordersToken, "other"}} {
		start := time.Now()
		resp, body := g.do("GET", "/v1/kvm/buckets/"+tc.bucket+"/watch", tc.token, nil)
		wantKind(t, resp, body, 403, "forbidden")
		w := g.dialWS(tc.token)
		w.next("connected")
		w.send(map[string]any{"op": "watch", "sid": "w", "bucket": tc.bucket})
		if e := w.next("error"); e["status"] != float64(403) {
			t.Fatalf("WebSocket watch of %s: %v", tc.bucket, e)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("watch of %s: 403 after %v", tc.bucket, d)
		}
	}
	if n := consumerCount(t, g.kvStream("other")); n != 0 {
		t.Fatalf("%d consumers on the forbidden bucket", n)
	}
}

func TestKVWatchWithoutJetStreamIs503(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	resp, body := g.do("GET", "/v1/kvm/buckets/cfg/watch", adminToken, nil)
	wantKind(t, resp, body, 503, "jetstream-unavailable")
	w := g.dialWS(adminToken)
	w.next("connected")
	w.send(map[string]any{"op": "watch", "sid": "w", "bucket": "cfg"})
	if e := w.next("error"); e["status"] != float64(503) {
		t.Fatalf("WebSocket watch without JetStream: %v", e)
	}
}

// TestKVWatchesLeaveNoConsumers ends watches every way they end: unsub,
// a stream's client going, a session closing or dropping. Each time the
// bucket's consumers, the gateway's subscriptions and the server's go
// back to what they were; goroutines are checked by TestMain. The
// watches are counted in the key-value operations metric.
func TestKVWatchesLeaveNoConsumers(t *testing.T) {
	t.Parallel()
	g := startWatch(t, "")
	st := g.kvStream("cfg")
	g.mustPut("/v1/kv/cfg/k", "v")
	warm := g.watch(t, "sse", watchToken, "cfg", "", nil)
	wantEntry(t, warm, "k", 1, "PUT", "v")
	warm.(kvSSEReader).s.close()
	waitNoConsumers(t, st)
	waitFor(t, "the warm-up watch to go", func() bool { return metricValue(t, g, "natsgate_jetstream_subscriptions") == 0 })
	subsBefore := g.serverSubs()

	const n = 6
	var streams []*sseStream
	var sessions []*wsClient
	for i := range n {
		accept := ""
		if i%2 == 1 {
			accept = "application/x-ndjson"
		}
		s := g.stream("/v1/kvm/buckets/cfg/watch", watchToken, accept)
		if s.resp.StatusCode != 200 {
			t.Fatalf("status %d", s.resp.StatusCode)
		}
		streams = append(streams, s)
		w := g.dialWS(watchToken)
		w.next("connected")
		for _, sid := range []string{"a", "b"} {
			w.send(map[string]any{"op": "watch", "sid": sid, "bucket": "cfg"})
			for f := w.next("ok", "kv"); f["op"] != "ok"; f = w.next("ok", "kv") {
			}
		}
		sessions = append(sessions, w)
	}
	waitFor(t, "every consumer", func() bool { return consumerCount(t, st) == 3*n })
	if got := metricValue(t, g, "natsgate_jetstream_subscriptions"); got != 3*n {
		t.Fatalf("natsgate_jetstream_subscriptions %v, want %d", got, 3*n)
	}
	if got := metricValue(t, g, `natsgate_kv_operations_total{op="watch",status="200"}`); got != 3*n+1 {
		t.Fatalf(`natsgate_kv_operations_total{op="watch",status="200"} %v, want %d`, got, 3*n+1)
	}
	// unsub alone removes its consumer.
	sessions[0].send(map[string]any{"op": "unsub", "sid": "a"})
	for f := sessions[0].next("ok", "kv", "status"); f["op"] != "ok"; f = sessions[0].next("ok", "kv", "status") {
	}
	waitFor(t, "the unsubscribed watch's consumer to go", func() bool { return consumerCount(t, st) == 3*n-1 })
	for i, s := range streams {
		s.close()
		if i%2 == 0 {
			sessions[i].c.Close(websocket.StatusNormalClosure, "")
		} else {
			sessions[i].c.CloseNow()
		}
	}
	waitNoConsumers(t, st)
	waitFor(t, "the subscriptions to be gone", func() bool {
		return metricValue(t, g, "natsgate_jetstream_subscriptions") == 0 && metricValue(t, g, "natsgate_subscriptions") == 0
	})
	waitFor(t, "the server's subscriptions to be as before", func() bool { return g.serverSubs() == subsBefore })
}

// TestKVWatchSlowReaderIsPacedAndGetsEverything writes 8 MiB to a bucket
// and lets a watcher fall behind through a 16 KiB queue: the gateway
// waits for it instead of dropping, and it gets every entry once, in
// order, then the caught-up notice, and no drop notice.
func TestKVWatchSlowReaderIsPacedAndGetsEverything(t *testing.T) {
	t.Parallel()
	g := startWatch(t, "", func(o *gatewayOptions) {
		o.cfg.QueueBytes = 16 << 10
		o.cfg.SlowConsumerGrace = time.Minute
	})
	kv := nativeKV(t, g, "cfg")
	const n = 2000
	value := strings.Repeat("v", 4<<10)
	var acks []jetstream.PubAckFuture
	js := g.jsAdmin()
	for i := 1; i <= n; i++ {
		f, err := js.PublishAsync(fmt.Sprintf("$KV.cfg.k%d", i), []byte(value))
		if err != nil {
			t.Fatal(err)
		}
		acks = append(acks, f)
	}
	for _, f := range acks {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatal(err)
		case <-time.After(10 * time.Second):
			t.Fatal("no acknowledgement")
		}
	}
	if st, _ := kv.Status(context.Background()); st.Values() != n {
		t.Fatalf("%d values stored, want %d", st.Values(), n)
	}
	for _, transport := range []string{"ws", "sse"} {
		waitsBefore := metricValue(t, g, "natsgate_jetstream_paced_waits_total")
		r := g.openPacedWatch(t, transport)
		deadline := time.Now().Add(30 * time.Second)
		for metricValue(t, g, "natsgate_jetstream_paced_waits_total") == waitsBefore {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the gateway never waited for a watcher that did not read", transport)
			}
			time.Sleep(10 * time.Millisecond)
		}
		for want := 1; want <= n; want++ {
			rev, end := r.read()
			if rev != want {
				t.Fatalf("%s: got revision %d (%s), want %d", transport, rev, end, want)
			}
			if want%8 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		if rev, end := r.read(); rev != 0 || !strings.Contains(end, `"kv":"current"`) {
			t.Fatalf("%s: after the last entry %d %q, want the current notice", transport, rev, end)
		}
	}
	if d := metricValue(t, g, `natsgate_messages_dropped_total{transport="ws"}`) + metricValue(t, g, `natsgate_messages_dropped_total{transport="sse"}`); d != 0 {
		t.Fatalf("%v messages dropped", d)
	}
}

// openPacedWatch watches cfg over transport with a small receive buffer,
// reading one entry at a time with no reading ahead beyond the socket's
// own (seqReader: a revision, or 0 and what came instead).
func (g *gateway) openPacedWatch(t testing.TB, transport string) seqReader {
	t.Helper()
	client := smallReadBuffer(t)
	if transport == "ws" {
		c, _, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(g.URL, "http")+"/v1/ws",
			&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + watchToken}}, HTTPClient: client})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.CloseNow() })
		c.SetReadLimit(-1)
		if err := c.Write(context.Background(), websocket.MessageText, []byte(`{"op":"watch","sid":"p","bucket":"cfg"}`)); err != nil {
			t.Fatal(err)
		}
		readUntil(t, c, `"op":"ok"`)
		return wsRevReader{c}
	}
	req, _ := http.NewRequest("GET", g.URL+"/v1/kvm/buckets/cfg/watch", nil)
	req.Header.Set("Authorization", "Bearer "+watchToken)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	return sseRevReader{bufio.NewReaderSize(resp.Body, 4096)}
}

type wsRevReader struct{ c *websocket.Conn }

func (r wsRevReader) read() (int, string) {
	for {
		_, b, err := r.c.Read(context.Background())
		if err != nil {
			return 0, fmt.Sprint(websocket.CloseStatus(err), " ", err)
		}
		var f struct {
			Op       string
			Revision int
			Nats     string
		}
		if json.Unmarshal(b, &f) != nil {
			return 0, "bad frame " + string(b)
		}
		switch {
		case f.Op == "kv":
			return f.Revision, ""
		case f.Op == "status" && f.Nats != "":
		default:
			return 0, string(b)
		}
	}
}

type sseRevReader struct{ br *bufio.Reader }

func (r sseRevReader) read() (int, string) {
	for {
		l, err := r.br.ReadString('\n')
		if err != nil {
			return 0, "EOF " + err.Error()
		}
		l = strings.TrimSuffix(l, "\n")
		switch {
		case strings.HasPrefix(l, "id: "):
			rev, _ := strconv.Atoi(l[4:])
			return rev, ""
		case l == "", l == ": subscribed", l == ": keep-alive", strings.HasPrefix(l, "data: {\"bucket\""):
		case l == "event: status":
		default:
			return 0, l
		}
	}
}

// TestKVWatchSurvivesANATSRestart restarts the NATS server behind the
// gateway (as with --nats-url), keeping its store: the watches'
// consumers are gone with it, and each recreates itself from one past the
// last revision delivered, on every transport: nothing lost or repeated,
// and no second current notice (the watch never ended).
func TestKVWatchSurvivesANATSRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startGateway(t, withJetStream, func(o *gatewayOptions) {
		o.external = true
		o.storeDir = dir
		o.pool.ReconnectWait = 50 * time.Millisecond
	})
	g.mkBucket("durable", `{"history":10}`)
	g.mustPut("/v1/kv/durable/k", "v1")
	g.mustPut("/v1/kv/durable/k", "v2")
	var readers []jsReader
	for _, transport := range transports {
		r := g.watch(t, transport, adminToken, "durable", "include=allHistory", map[string]any{"include": "allHistory"})
		wantEntry(t, r, "k", 1, "PUT", "v1")
		wantEntry(t, r, "k", 2, "PUT", "v2")
		wantCurrent(t, r)
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
	kv, err := js2.KeyValue(context.Background(), "durable")
	if err != nil {
		t.Fatal(err)
	}
	for i := 3; i <= 4; i++ {
		if _, err := kv.Put(context.Background(), "k", []byte(fmt.Sprint("v", i))); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range readers {
		wantEntry(t, r, "k", 3, "PUT", "v3")
		wantEntry(t, r, "k", 4, "PUT", "v4")
	}
	if _, err := kv.Put(context.Background(), "k", []byte("v5")); err != nil {
		t.Fatal(err)
	}
	for _, r := range readers {
		wantEntry(t, r, "k", 5, "PUT", "v5")
	}
}

// TestKVWatchEndsWhenItsBucketIsDeleted deletes the bucket under a
// watch on each transport: 404, the HTTP streams end, no consumer stays.
func TestKVWatchEndsWhenItsBucketIsDeleted(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream)
	t.Run("transports", func(t *testing.T) {
		for _, transport := range transports {
			t.Run(transport, func(t *testing.T) {
				t.Parallel()
				bucket := "gone" + transport
				g.mkBucket(bucket, "")
				if resp, body := g.do("PUT", "/v1/kv/"+bucket+"/a", adminToken, strings.NewReader("1")); resp.StatusCode != 200 {
					t.Fatalf("put: %d %s", resp.StatusCode, body)
				}
				// An entry delivered: the consumer has a pull request waiting,
				// which the server answers when the consumer goes (without one
				// only missed heartbeats tell, in 10 s).
				r := g.watch(t, transport, adminToken, bucket, "", nil)
				wantEntry(t, r, "a", 1, bridge.KVPut, "1")
				wantCurrent(t, r)
				if resp, body := g.do("DELETE", "/v1/kvm/buckets/"+bucket, adminToken, nil); resp.StatusCode != 204 {
					t.Fatalf("deleting the bucket: %d %s", resp.StatusCode, body)
				}
				wantEnded(t, r, "no such key-value bucket: bucket "+bucket+" was deleted")
			})
		}
	})
	wantFeedsGone(t, g)
}
