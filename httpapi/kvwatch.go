package httpapi

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"net/url"
	"strconv"

	"github.com/natsgate/natsgate/bridge"
)

// Key-value watches: a JetStream feed (jsFeed, paced like any JetStream
// subscription) of a bridge.KVWatch, on SSE, NDJSON and WebSocket.

// watchOptions checks a watch's options as a client gave them: include
// one of the three, a filter as keys take it (given, not empty).
func watchOptions(o bridge.KVWatchOptions, filterGiven bool) (bridge.KVWatchOptions, error) {
	switch o.Include {
	case "", bridge.KVIncludeLastValue, bridge.KVIncludeAllHistory, bridge.KVIncludeUpdatesOnly:
	default:
		return o, badRequest("include %s is not one of %s, %s, %s", strconv.Quote(truncateReason(o.Include)),
			bridge.KVIncludeLastValue, bridge.KVIncludeAllHistory, bridge.KVIncludeUpdatesOnly)
	}
	if filterGiven || o.Filter != "" {
		if err := bridge.ValidateKeyFilter(o.Filter); err != nil {
			return o, err
		}
	}
	return o, nil
}

// queryWatch reads a watch's query: filter, include, ignoreDeletes and
// resumeRevision, with a Last-Event-ID header (the revision last
// received) overriding include and resumeRevision.
func queryWatch(q url.Values, h http.Header) (bridge.KVWatchOptions, error) {
	o := bridge.KVWatchOptions{Include: q.Get("include"), Filter: q.Get("filter")}
	if len(q["filter"]) > 1 {
		return o, badRequest("give one filter (a watch takes one; * and a final > match several keys)")
	}
	if q.Has("ignoreDeletes") {
		v, err := strconv.ParseBool(q.Get("ignoreDeletes"))
		if err != nil {
			return o, badRequest("ignoreDeletes %s is not true or false", strconv.Quote(truncateReason(q.Get("ignoreDeletes"))))
		}
		o.IgnoreDeletes = v
	}
	if q.Has("resumeRevision") {
		v := q.Get("resumeRevision")
		rev, err := strconv.ParseUint(v, 10, 64)
		if err != nil || rev == 0 {
			return o, badRequest("resumeRevision %s is not a revision (a whole number from 1)", strconv.Quote(truncateReason(v)))
		}
		o.ResumeRevision = rev
	}
	if id := h.Get("Last-Event-ID"); id != "" {
		last, err := strconv.ParseUint(id, 10, 64)
		if err != nil || last == math.MaxUint64 {
			return o, badRequest("Last-Event-ID %s is not the revision of an entry (a whole number)", strconv.Quote(truncateReason(id)))
		}
		o.ResumeRevision = last + 1
	}
	return watchOptions(o, q.Has("filter"))
}

// frameWatch reads a WebSocket watch frame's options: ignoreDeletes a
// boolean, resumeRevision a number from 1.
func frameWatch(f *frame) (bridge.KVWatchOptions, error) {
	o := bridge.KVWatchOptions{Filter: f.Filter, Include: f.Include}
	given := func(raw json.RawMessage) bool { return raw != nil && string(raw) != "null" }
	if given(f.IgnoreDeletes) && json.Unmarshal(f.IgnoreDeletes, &o.IgnoreDeletes) != nil {
		return o, badRequest("ignoreDeletes must be true or false")
	}
	if given(f.ResumeRevision) {
		if json.Unmarshal(f.ResumeRevision, &o.ResumeRevision) != nil || o.ResumeRevision == 0 {
			return o, badRequest("resumeRevision must be a revision (a whole number from 1)")
		}
	}
	return watchOptions(o, f.Filter != "")
}

// watchKV starts a watch for a client: entry encodes each entry for the
// client's transport, current is the caught-up notice, so encoded.
func (s *Server) watchKV(ctx context.Context, c *bridge.Conn, bucket string, o bridge.KVWatchOptions, entry func(*bridge.KVEntry) []byte, current []byte) (*jsFeed, error) {
	w, err := c.WatchKV(ctx, bucket, o)
	if err != nil {
		return nil, err
	}
	return s.newFeed(&jsFeed{sub: w.StreamSubscription, kv: w, entry: entry, current: current}), nil
}

// countWatch counts a watch in the key-value operations metric: 200 when
// it started, else its error's status (not a client that went first).
func (s *Server) countWatch(err error) {
	status := http.StatusOK
	if err != nil {
		status, _ = classify(err)
	}
	if status != 499 {
		s.metrics.kvOps.WithLabelValues("watch", strconv.Itoa(status)).Inc()
	}
}

// entryObject is the entry object of the API contract, as JSON.
func entryObject(e *bridge.KVEntry) []byte {
	b, _ := json.Marshal(entryJSON(e)) // strings, numbers and bytes only: cannot fail
	return b
}

// streamEntry encodes entries for a stream: on SSE with the revision as
// the event's id, so a reconnecting EventSource resumes after it.
func streamEntry(f streamFormat) func(*bridge.KVEntry) []byte {
	if f.contentType() != "text/event-stream" {
		return func(e *bridge.KVEntry) []byte { return append(entryObject(e), '\n') }
	}
	return func(e *bridge.KVEntry) []byte {
		b := strconv.AppendUint([]byte("id: "), e.Revision, 10)
		b = append(append(b, "\ndata: "...), entryObject(e)...)
		return append(b, "\n\n"...)
	}
}

// currentNotice is a watch's caught-up notice.
var currentNotice = statusNotice("kv", "current")

// watchStalledMessage is what a watcher closed for not reading is told
// (as a WebSocket close reason too: at most 123 bytes).
func watchStalledMessage(s *Server) string {
	return "slow consumer: read nothing for " + s.cfg.SlowConsumerGrace.String() + "; resume with resumeRevision one past the last revision received"
}

// handleKVWatch handles "GET /v1/kvm/buckets/{bucket}/watch": a watch of
// the bucket's entries streamed as Server-Sent Events or NDJSON, each
// entry as its entry object (SSE id: its revision), the caught-up notice
// once the current values have been sent; paced to the client like a
// JetStream subscription. A Last-Event-ID header resumes after that
// revision.
func (s *Server) handleKVWatch() http.HandlerFunc {
	return apiHandler(func(w http.ResponseWriter, r *http.Request) (err error) {
		defer func() {
			if err != nil {
				s.countWatch(err)
			}
		}()
		tok, bucket, _, err := s.kvTarget(r, false)
		if err != nil {
			return err
		}
		o, err := queryWatch(r.URL.Query(), r.Header)
		if err != nil {
			return err
		}
		f := formatByAccept(r)
		c, err := s.connect(r.Context(), r.RemoteAddr, tok)
		if err != nil {
			return err
		}
		defer c.Release()
		if err := s.streams.add(c.Key()); err != nil {
			return err
		}
		defer s.streams.done(c.Key())
		wake := make(chanWaker, 1)
		box := newOutbox(s.cfg.QueueBytes, s.metrics.dropped.WithLabelValues(f.name()), wake)
		defer box.close()
		feed, err := s.watchKV(r.Context(), c, bucket, o, streamEntry(f), f.appendNotice(nil, currentNotice))
		if err != nil {
			return err
		}
		defer feed.Close()
		s.countWatch(nil)
		ended := make(chan notice, 1)
		go s.runFeed(feed, box, nil, s.feedEnd(f, box, ended, watchStalledMessage(s)))
		s.serveStream(w, r, c, f, box, wake, ended)
		return nil
	})
}

// watch starts a key-value watch on a WebSocket session: ok, then
// {"op":"kv","sid":…,…entry…} frames and the caught-up notice
// {"op":"status","sid":…,"kv":"current"}, paced to the session's reading.
// A session that reads nothing for SlowConsumerGrace is closed with 1008.
func (ss *session) watch(f *frame) {
	s := ss.s
	if !ss.sidFree(f) {
		return
	}
	if err := bridge.ValidateBucket(f.Bucket); err != nil {
		ss.reply(f, err)
		return
	}
	o, err := frameWatch(f)
	if err != nil {
		ss.reply(f, err)
		return
	}
	sid := f.Sid
	prefix := []byte(`{"op":"kv","sid":"` + sid + `",`)
	entry := func(e *bridge.KVEntry) []byte { return append(append([]byte(nil), prefix...), entryObject(e)[1:]...) }
	current := []byte(`{"op":"status","sid":"` + sid + `","kv":"current"}`)
	feed, err := s.watchKV(ss.context(), ss.conn, f.Bucket, o, entry, current)
	s.countWatch(err)
	if err != nil {
		ss.reply(f, err)
		return
	}
	ss.addSub(sid, feed)
	ss.reply(f, nil)
	ss.runFeed(sid, feed)
}
