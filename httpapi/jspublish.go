package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/natsgate/natsgate/bridge"
)

// idempotencyHeader names a stored publish for the stream's duplicate
// detection: it becomes the message's Nats-Msg-Id.
const idempotencyHeader = "Idempotency-Key"

// countStored counts n stored publishes that got status.
func (s *Server) countStored(status int, n int) {
	s.metrics.stored.WithLabelValues(strconv.Itoa(status)).Add(float64(n))
}

// handleJSPublish handles "POST /v1/js/publish/{subject}": the body is
// the payload, NatsH-* headers as for core publishes, Idempotency-Key
// the message id; 200 with the stream's acknowledgement once it has
// stored the message.
func (s *Server) handleJSPublish() http.HandlerFunc {
	return apiHandler(func(w http.ResponseWriter, r *http.Request) (err error) {
		tok, m, err := s.messageFromRequest(r)
		if err != nil {
			return err
		}
		if queryValue(r, "reply") != "" {
			return badRequest("a stored publish takes no reply subject: the stream's acknowledgement is the answer")
		}
		switch keys := r.Header.Values(idempotencyHeader); {
		case len(keys) > 1:
			return badRequest("more than one %s header", idempotencyHeader)
		case len(keys) == 1:
			if err := m.SetMsgID(keys[0]); err != nil {
				return err
			}
		}
		c, err := s.connect(r.Context(), r.RemoteAddr, tok)
		if err != nil {
			return err
		}
		defer c.Release()
		defer func() {
			status := http.StatusOK
			if err != nil {
				status, _ = classify(err)
			}
			s.countStored(status, 1)
		}()
		if m.Data, err = s.readBody(w, r, c.MaxPayload()); err != nil {
			return err
		}
		ack, err := c.PublishStored(r.Context(), m, s.cfg.MaxSubjectLen)
		if err != nil {
			return err
		}
		s.metrics.msgsIn.WithLabelValues("http").Inc()
		writeJSON(w, http.StatusOK, ack)
		return nil
	})
}

// storedEntry is an entry of a stored batch: a core batch entry and an
// optional message id.
type storedEntry struct {
	wireMsg
	MsgID string `json:"msg_id,omitempty"`
}

// parseStoredEntry decodes a stored batch entry, with sc's fast path
// when the entry has the usual shape.
func (sc *entryScanner) parseStoredEntry(line []byte) (*bridge.Msg, error) {
	var e storedEntry
	if sc.scan(line, &e.wireMsg, &e.MsgID) {
		return e.toStoredMsg()
	}
	return decodeStoredEntry(line)
}

// decodeStoredEntry decodes a stored batch entry with encoding/json.
func decodeStoredEntry(line []byte) (*bridge.Msg, error) {
	var e storedEntry
	if err := json.Unmarshal(line, &e); err != nil {
		return nil, badRequest("entry is not a JSON object: %v", err)
	}
	return e.toStoredMsg()
}

// toStoredMsg converts and checks a stored entry.
func (e *storedEntry) toStoredMsg() (*bridge.Msg, error) {
	if e.Reply != "" {
		return nil, badRequest("a stored publish takes no reply subject: the stream's acknowledgement is the answer")
	}
	m, err := e.toMsg()
	if err != nil {
		return nil, err
	}
	return m, m.SetMsgID(e.MsgID)
}

// storedResult is one entry's outcome in a stored batch's answer: the
// acknowledgement's fields when stored, a detail otherwise.
type storedResult struct {
	Index  int `json:"index"`
	Status int `json:"status"`
	*bridge.PubAck
	Detail string `json:"detail,omitempty"`
}

// handleJSPublishBatch handles "POST /v1/js/publish": NDJSON entries as
// for core batches plus "msg_id", pipelined to their streams; 200 with
// every entry's acknowledgement when all were stored, else 207 with the
// same results, failed entries carrying status and detail.
func (s *Server) handleJSPublishBatch() http.HandlerFunc {
	return apiHandler(func(w http.ResponseWriter, r *http.Request) error {
		mem := new(batchMem)
		b, err := s.openBatch(w, r, mem, mem.sc.parseStoredEntry)
		if err != nil {
			return err
		}
		defer b.c.Release()
		c, msgs, errs := b.c, b.msgs, b.errs
		valid, at := b.validEntries()
		acks := make([]*bridge.PubAck, len(msgs))
		for j, res := range c.PublishStoredBatch(r.Context(), valid, s.cfg.MaxSubjectLen) {
			acks[at[j]], errs[at[j]] = res.Ack, res.Err
		}
		results := make([]storedResult, len(msgs))
		failed, unavailable := 0, 0
		byStatus := map[int]int{}
		for i, err := range errs {
			results[i] = storedResult{Index: i, Status: http.StatusOK, PubAck: acks[i]}
			if err != nil {
				// Without JetStream nothing can be stored: the
				// batch as a whole is 503 jetstream-unavailable.
				if errors.Is(err, bridge.ErrJetStreamUnavailable) {
					s.countStored(http.StatusServiceUnavailable, len(msgs))
					return err
				}
				status, _ := classify(err)
				results[i] = storedResult{Index: i, Status: status, Detail: err.Error()}
				failed++
				if errors.Is(err, bridge.ErrUnavailable) {
					unavailable++
				}
			}
			byStatus[results[i].Status]++
		}
		for status, n := range byStatus {
			s.countStored(status, n)
		}
		s.metrics.msgsIn.WithLabelValues("http").Add(float64(len(msgs) - failed))
		switch {
		case failed == 0:
			writeJSON(w, http.StatusOK, map[string]any{"results": results})
		case unavailable == len(msgs):
			return errs[0]
		default:
			writeJSON(w, http.StatusMultiStatus, map[string]any{"results": results})
		}
		return nil
	})
}
