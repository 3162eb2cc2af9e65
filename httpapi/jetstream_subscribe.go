package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/natsgate/natsgate/bridge"
)

// startParams are a subscription's start position as a client gave it;
// has* tell a parameter given empty from one not given.
type startParams struct {
	deliver, seq, time          string
	hasDeliver, hasSeq, hasTime bool
}

// start validates the parameters: nil for a core subscription.
func (p startParams) start() (*bridge.Start, error) {
	n := 0
	for _, has := range []bool{p.hasDeliver, p.hasSeq, p.hasTime} {
		if has {
			n++
		}
	}
	switch {
	case n == 0:
		return nil, nil
	case n > 1:
		return nil, badRequest("give at most one of deliver, start_seq and start_time")
	case p.hasDeliver:
		switch p.deliver {
		case bridge.DeliverAll, bridge.DeliverLast, bridge.DeliverNew, bridge.DeliverLastPerSubject:
			return &bridge.Start{Deliver: p.deliver}, nil
		}
		return nil, badRequest("deliver %s is not one of all, last, new, last_per_subject", strconv.Quote(truncateReason(p.deliver)))
	case p.hasSeq:
		seq, err := strconv.ParseUint(p.seq, 10, 64)
		if err != nil || seq == 0 {
			return nil, badRequest("start_seq %s is not a stream sequence (an integer of at least 1)", strconv.Quote(truncateReason(p.seq)))
		}
		return &bridge.Start{Seq: seq}, nil
	}
	// A '+' in a query string decodes as a space; RFC 3339 has none.
	t, err := time.Parse(time.RFC3339Nano, strings.ReplaceAll(p.time, " ", "+"))
	if err != nil {
		return nil, badRequest("start_time %s is not an RFC 3339 time such as 2026-01-02T15:04:05Z", strconv.Quote(truncateReason(p.time)))
	}
	return &bridge.Start{Time: t}, nil
}

// errStartWithQueue: queue groups share core messages among members; a
// JetStream subscription reads a stream from a position of its own.
var errStartWithQueue = badRequest("a JetStream subscription (deliver, start_seq, start_time or Last-Event-ID) takes no queue group")

// queryStart reads a streamed subscription's start position: the query's
// deliver, start_seq or start_time, overridden by a Last-Event-ID header,
// which means start_seq one past it. resume is true when only the header
// asked for a JetStream subscription: on a subject no stream holds it
// is then ignored.
func queryStart(q url.Values, h http.Header) (start *bridge.Start, resume bool, err error) {
	p := startParams{deliver: q.Get("deliver"), seq: q.Get("start_seq"), time: q.Get("start_time"),
		hasDeliver: q.Has("deliver"), hasSeq: q.Has("start_seq"), hasTime: q.Has("start_time")}
	if start, err = p.start(); err != nil {
		return nil, false, err
	}
	if id := h.Get("Last-Event-ID"); id != "" {
		last, err := strconv.ParseUint(id, 10, 64)
		if err != nil || last == math.MaxUint64 {
			return nil, false, badRequest("Last-Event-ID %s is not the seq of a message (an integer of at least 0)", strconv.Quote(truncateReason(id)))
		}
		resume = start == nil
		start = &bridge.Start{Seq: last + 1}
	}
	if start != nil && q.Has("queue") {
		return nil, false, errStartWithQueue
	}
	return start, resume, nil
}

// frameStart reads a WebSocket sub frame's start position: deliver and
// start_time strings, start_seq a number.
func frameStart(f *frame) (*bridge.Start, error) {
	var p startParams
	given := func(raw json.RawMessage) bool { return raw != nil && string(raw) != "null" }
	str := func(raw json.RawMessage, name string, dst *string, has *bool) error {
		if !given(raw) {
			return nil
		}
		*has = true
		if json.Unmarshal(raw, dst) != nil {
			return badRequest("%s must be a string", name)
		}
		return nil
	}
	if err := str(f.Deliver, "deliver", &p.deliver, &p.hasDeliver); err != nil {
		return nil, err
	}
	if err := str(f.StartTime, "start_time", &p.time, &p.hasTime); err != nil {
		return nil, err
	}
	if given(f.StartSeq) {
		if f.StartSeq[0] == '"' {
			return nil, badRequest("start_seq must be a number")
		}
		p.hasSeq, p.seq = true, string(f.StartSeq)
	}
	start, err := p.start()
	if err == nil && start != nil && f.Queue != "" {
		err = errStartWithQueue
	}
	return start, err
}

// jsFeed pulls a JetStream subscription into a client's outbox only as
// fast as the client takes it: one message at a time, each waiting for
// room below the outbox's bound (outbox.pushPaced), with at most
// bridge.PullBatch messages pulled ahead in the NATS client. A client
// that takes nothing for SlowConsumerGrace ends the feed with errStalled.
//
// A key-value watch is such a feed too (kv set): its entries, encoded for
// the client's transport by entry, and its caught-up notice, current,
// queued in order with them.
type jsFeed struct {
	sub *bridge.StreamSubscription

	kv      *bridge.KVWatch
	entry   func(*bridge.KVEntry) []byte
	current []byte

	// What the client was given, kept by runFeed and read once done is
	// closed, so that a session moving to another connection resumes the
	// feed there (resumeOn): the seq (revision) of the last message
	// (entry) queued, and whether the caught-up notice was.
	last     uint64
	caughtUp bool
	done     chan struct{} // closed when runFeed stops feeding
	// told is set once a WebSocket client was told the feed ended (by
	// runFeed's end, before the error frame is queued, or by a move):
	// from then on the feed holds neither its sid nor a place among the
	// session's subscriptions (sidFree).
	told atomic.Bool
}

// subscribeStream starts a JetStream subscription for a client. The
// caller queues the gap notice, if any, then starts the feed with runFeed.
func (s *Server) subscribeStream(ctx context.Context, c *bridge.Conn, subject string, start bridge.Start) (*jsFeed, error) {
	sub, err := c.SubscribeStream(ctx, subject, start, s.cfg.MaxSubjectLen)
	if err != nil {
		return nil, err
	}
	return s.newFeed(&jsFeed{sub: sub}), nil
}

// newFeed counts a feed just started and makes it ready for runFeed.
func (s *Server) newFeed(f *jsFeed) *jsFeed {
	s.metrics.jsConsumersCreated.Inc()
	s.metrics.jsSubscriptions.Inc()
	f.done = make(chan struct{})
	return f
}

// resumeOn starts on c a feed continuing f, which has stopped (done is
// closed): from one past what f queued, so its client misses nothing and
// gets nothing twice.
func (s *Server) resumeOn(ctx context.Context, c *bridge.Conn, f *jsFeed) (*jsFeed, error) {
	if f.kv == nil {
		sub, err := f.sub.ResumeOn(ctx, c, f.last, s.cfg.MaxSubjectLen)
		if err != nil {
			return nil, err
		}
		return s.newFeed(&jsFeed{sub: sub}), nil
	}
	w, err := f.kv.ResumeOn(ctx, c, f.last, f.caughtUp)
	if err != nil {
		return nil, err
	}
	return s.newFeed(&jsFeed{sub: w.StreamSubscription, kv: w, entry: f.entry, current: f.current, caughtUp: f.caughtUp}), nil
}

// next is the feed's next item for the client's outbox, with its seq
// (revision; 0 for the caught-up notice); prefix goes before a message's
// fields (WebSocket frames).
func (f *jsFeed) next(prefix []byte) (outItem, uint64, error) {
	if f.kv == nil {
		m, err := f.sub.Next()
		if err != nil {
			return outItem{}, 0, err
		}
		return outItem{prefix: prefix, msg: m, size: itemSize(m)}, m.Stored.Seq, nil
	}
	e, caughtUp, err := f.kv.Next()
	switch {
	case err != nil:
		return outItem{}, 0, err
	case caughtUp:
		return rawItem(f.current, true), 0, nil
	}
	return rawItem(f.entry(e), false), e.Revision, nil
}

// runFeed feeds box, each message after prefix, until the feed is closed
// or the client goes; then it removes the consumer. end is called when
// the feed ends by itself: errStalled, or a NATS error.
func (s *Server) runFeed(feed *jsFeed, box *outbox, prefix []byte, end func(error)) {
	defer func() {
		if err := feed.sub.Close(); err != nil {
			s.logger.Info("JetStream consumer not removed; the server drops it once inactive", "stream", feed.sub.Stream(), "err", err)
		}
		s.metrics.jsConsumersRemoved.Inc()
		s.metrics.jsSubscriptions.Dec()
	}()
	defer close(feed.done) // first: a resume need not wait for the removal
	for {
		it, seq, err := feed.next(prefix)
		if err == nil {
			err = box.pushPaced(it, s.cfg.SlowConsumerGrace, feed.sub.Stopped(), s.metrics.jsPacedWaits)
		}
		switch {
		case err == nil:
			if seq != 0 {
				feed.last = seq
			} else if feed.kv != nil {
				feed.caughtUp = true
			}
			continue
		case errors.Is(err, bridge.ErrClosed), errors.Is(err, errPushStopped), errors.Is(err, errOutboxClosed):
		default:
			end(err)
		}
		return
	}
}

// Close ends the feed; its goroutine removes the consumer and exits.
func (f *jsFeed) Close() { f.sub.Stop() }

// gapJSON is a gap notice's "gap" object.
func gapJSON(b []byte, g *bridge.Gap) []byte {
	b = append(b, `{"first_seq":`...)
	b = strconv.AppendUint(b, g.FirstSeq, 10)
	if g.RequestedTime.IsZero() {
		b = append(b, `,"requested_seq":`...)
		b = strconv.AppendUint(b, g.RequestedSeq, 10)
	} else {
		b = append(append(append(b, `,"requested_time":"`...), bridge.FormatTime(g.RequestedTime)...), '"')
	}
	return append(b, '}')
}

// gapNotice is a stream's gap notice.
func gapNotice(g *bridge.Gap) notice {
	first := strconv.FormatUint(g.FirstSeq, 10)
	return notice{op: "status", text: "gap: messages before seq " + first + " are gone",
		json: string(append(gapJSON([]byte(`{"op":"status","gap":`), g), '}'))}
}

// stalledMessage is what a client closed for not reading is told (as a
// WebSocket close reason too: at most 123 bytes).
func stalledMessage(grace time.Duration) string {
	return "slow consumer: read nothing for " + grace.String() + "; resume with start_seq one past the last seq received"
}
