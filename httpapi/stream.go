package httpapi

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/natsgate/natsgate/bridge"
)

// streamSink feeds one stream's outbox from its subscription.
type streamSink struct{ o *outbox }

func (s *streamSink) Deliver(m *bridge.Msg) { s.o.push(nil, m) }
func (s *streamSink) Dropped(n int)         { s.o.noteDropped(n) }

// notice is an out-of-band line of a stream: an error (slow consumer) or
// a status change, as a JSON object with an "op" and as plain text.
type notice struct {
	op   string // "error" or "status"
	json string
	text string
}

func errorNotice(status int, msg string) notice {
	return notice{op: "error", text: msg, json: fmt.Sprintf(`{"op":"error","status":%d,"message":%s}`, status, strconv.Quote(msg))}
}

func statusNotice(field, value string) notice {
	return notice{op: "status", text: field + " " + value, json: `{"op":"status","` + field + `":"` + value + `"}`}
}

// streamFormat writes messages and notices as SSE or NDJSON.
type streamFormat interface {
	contentType() string
	name() string
	appendMsg(b []byte, m *bridge.Msg) []byte
	appendNotice(b []byte, n notice) []byte
	appendKeepAlive(b []byte) []byte
}

// sseFormat: one "data:" line per message; errors (slow consumer) as
// comments; status changes as "event: status".
type sseFormat struct{}

func (sseFormat) contentType() string { return "text/event-stream" }
func (sseFormat) name() string        { return "sse" }
func (sseFormat) appendMsg(b []byte, m *bridge.Msg) []byte {
	if m.Stored != nil { // a JetStream message: its seq is the event's id, for Last-Event-ID
		b = strconv.AppendUint(append(b, "id: "...), m.Stored.Seq, 10)
		b = append(b, '\n')
	}
	b = append(b, "data: "...)
	b = append(b, m.JSON()...)
	return append(b, "\n\n"...)
}
func (sseFormat) appendNotice(b []byte, n notice) []byte {
	if n.op == "error" {
		return append(append(append(b, ": "...), n.text...), "\n\n"...)
	}
	return append(append(append(b, "event: status\ndata: "...), n.json...), "\n\n"...)
}
func (sseFormat) appendKeepAlive(b []byte) []byte { return append(b, ": keep-alive\n\n"...) }

// ndjsonFormat: one message object per line; notices are objects with an
// "op"; keep-alives are blank lines.
type ndjsonFormat struct{}

func (ndjsonFormat) contentType() string { return "application/x-ndjson" }
func (ndjsonFormat) name() string        { return "ndjson" }
func (ndjsonFormat) appendMsg(b []byte, m *bridge.Msg) []byte {
	return append(append(b, m.JSON()...), '\n')
}
func (ndjsonFormat) appendNotice(b []byte, n notice) []byte {
	return append(append(b, n.json...), '\n')
}
func (ndjsonFormat) appendKeepAlive(b []byte) []byte { return append(b, '\n') }
func wantsNDJSON(accept string) bool {
	return strings.Contains(accept, "application/x-ndjson") || strings.Contains(accept, "application/jsonl")
}

// formatByAccept is /v1/subscribe's format: NDJSON when the client asks
// for it, Server-Sent Events otherwise.
func formatByAccept(r *http.Request) streamFormat {
	if wantsNDJSON(r.Header.Get("Accept")) {
		return ndjsonFormat{}
	}
	return sseFormat{}
}

// handleSubscribe handles "GET /v1/subscribe/{subject}": a subscription
// streamed as Server-Sent Events or NDJSON (format chooses) until the
// client leaves, the token's connection closes or the gateway shuts down.
// With a start position (deliver, start_seq, start_time, Last-Event-ID)
// it is a JetStream subscription, paced to the client instead of
// dropping. A token with Config.MaxStreamsPerToken streams open gets 429.
func (s *Server) handleSubscribe(format func(*http.Request) streamFormat) http.HandlerFunc {
	return apiHandler(func(w http.ResponseWriter, r *http.Request) error {
		tok, err := s.bearer(r)
		if err != nil {
			return err
		}
		subject, err := subjectParam(r)
		if err == nil {
			err = bridge.ValidateSubscribeSubject(subject, s.cfg.MaxSubjectLen)
		}
		queue := r.URL.Query().Get("queue")
		if err == nil && r.URL.Query().Has("queue") {
			err = bridge.ValidateQueue(queue, s.cfg.MaxSubjectLen)
		}
		if err != nil {
			return err
		}
		start, resume, err := queryStart(r.URL.Query(), r.Header)
		if err != nil {
			return err
		}
		f := format(r)
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
		var ended chan notice // the end of a JetStream subscription's feed
		if start != nil {
			feed, err := s.subscribeStream(r.Context(), c, subject, *start)
			switch {
			case err == nil:
				defer feed.Close()
				ended = make(chan notice, 1)
				if g := feed.sub.Gap(); g != nil {
					box.pushCtrl(f.appendNotice(nil, gapNotice(g)))
				}
				go s.runFeed(feed, box, nil, s.feedEnd(f, box, ended, stalledMessage(s.cfg.SlowConsumerGrace)))
			case resume && (errors.Is(err, bridge.ErrNoStream) || errors.Is(err, bridge.ErrJetStreamUnavailable)):
				start = nil // Last-Event-ID alone, and no stream holds the subject
			default:
				return err
			}
		}
		if start == nil {
			sub, err := c.Subscribe(r.Context(), subject, queue, &streamSink{o: box}, s.cfg.MaxSubjectLen)
			if err != nil {
				return err
			}
			defer sub.Close()
		}
		s.serveStream(w, r, c, f, box, wake, ended)
		return nil
	})
}

// feedEnd is what a stream does when its JetStream feed ends by itself
// (runFeed's end): the outbox closes and the stream ends with the
// notice, sent on ended; a client that read nothing is told stalled.
func (s *Server) feedEnd(f streamFormat, box *outbox, ended chan<- notice, stalled string) func(error) {
	return func(err error) {
		status, _ := classify(err)
		n := errorNotice(status, err.Error())
		if errors.Is(err, errStalled) {
			s.metrics.slowClosed.WithLabelValues(f.name()).Inc()
			n = errorNotice(http.StatusTooManyRequests, stalled)
		}
		box.close()
		ended <- n
	}
}

// serveStream answers 200 and writes what box gets until the stream ends
// (pumpStream), telling the client of its NATS connection's changes and
// counting the stream meanwhile.
func (s *Server) serveStream(w http.ResponseWriter, r *http.Request, c *bridge.Conn, f streamFormat, box *outbox, wake <-chan struct{}, ended <-chan notice) {
	status := make(chan bridge.Status, 8)
	stop := c.Watch(func(st bridge.Status) {
		select {
		case status <- st:
		default:
		}
	})
	defer stop()
	open := s.metrics.sessions.WithLabelValues(f.name())
	open.Inc()
	defer open.Dec()
	s.metrics.subscriptions.Inc()
	defer s.metrics.subscriptions.Dec()

	// The http.Server's ReadTimeout bounds reading a request; a stream
	// lives on after that.
	_ = http.NewResponseController(w).SetReadDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", f.contentType())
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	s.pumpStream(w, r, c, f, box, wake, status, ended)
}

// flushingWriter writes to w and flushes what it wrote, each write
// bounded by WriteTimeout, so a stalled client is dropped rather than
// holding the writer: false once the client is gone.
func (s *Server) flushingWriter(w http.ResponseWriter) func(b []byte) bool {
	rc := http.NewResponseController(w)
	return func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
}

// pumpStream writes a stream until it ends. Every write has a deadline, so
// a stalled client is dropped rather than holding the writer. A notice
// from ended (a JetStream feed that stopped) is the stream's last.
func (s *Server) pumpStream(w http.ResponseWriter, r *http.Request, c *bridge.Conn, f streamFormat, box *outbox, wake <-chan struct{}, status <-chan bridge.Status,
	ended <-chan notice) {
	write := s.flushingWriter(w)
	var buf []byte
	if f.contentType() == "text/event-stream" {
		buf = append(buf, ": subscribed\n\n"...)
	}
	if !write(buf) {
		return
	}
	out := s.metrics.msgsOut.WithLabelValues(f.name())
	keepAlive := time.NewTicker(s.cfg.KeepAlive)
	defer keepAlive.Stop()
	var b batch
	for {
		buf = buf[:0]
		end := false
		select {
		case <-r.Context().Done():
			return
		case <-s.closing:
			buf, end = f.appendNotice(buf, statusNotice("gateway", "shutting down")), true
		case <-c.Done():
			buf, end = f.appendNotice(buf, closedNotice(c)), true
		case n := <-ended:
			buf, end = f.appendNotice(buf, n), true
		case st := <-status:
			buf = f.appendNotice(buf, statusNotice("nats", st.String()))
		case <-keepAlive.C:
			buf = f.appendKeepAlive(buf)
		case <-wake:
			var ok bool
			for !end {
				if b, ok = box.take(b); !ok {
					break
				}
				for _, c := range b.ctrl { // notices, formatted
					buf = append(buf, c...)
				}
				for _, it := range b.items {
					if it.msg == nil {
						buf = append(buf, it.raw...)
					} else {
						buf = f.appendMsg(buf, it.msg)
					}
				}
				out.Add(float64(messages(b.items)))
				if b.dropped > 0 {
					buf = f.appendNotice(buf, errorNotice(http.StatusTooManyRequests, fmt.Sprintf("slow consumer: %d dropped", b.dropped)))
				}
				if b.behind > s.cfg.SlowConsumerGrace {
					s.metrics.slowClosed.WithLabelValues(f.name()).Inc()
					buf = f.appendNotice(buf, errorNotice(http.StatusTooManyRequests, "slow consumer: closed after staying behind for "+b.behind.Round(time.Millisecond).String()))
					end = true
				}
				if !write(buf) {
					return
				}
				buf = buf[:0]
			}
		}
		if len(buf) > 0 && !write(buf) || end {
			return
		}
	}
}
