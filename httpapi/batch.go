package httpapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"slices"
	"sync"

	"github.com/natsgate/natsgate/bridge"
)

// wireMsg is a message as clients send it: a batch entry, or the body of
// a WebSocket pub or req frame.
type wireMsg struct {
	Subject    string          `json:"subject"`
	Reply      string          `json:"reply,omitempty"`
	Headers    json.RawMessage `json:"headers,omitempty"`
	Data       *string         `json:"data,omitempty"`
	DataBase64 *string         `json:"data_base64,omitempty"`
	// plainData, set by entryScanner in place of Data, is data as it
	// stands in the request body (a string without escapes), uncopied.
	plainData []byte
}

// toMsg converts and checks a client's message: headers as
// {"Name":"v"} or {"Name":["v1","v2"]}, and data or data_base64, not both.
func (wm *wireMsg) toMsg() (*bridge.Msg, error) {
	return wm.toMsgIn(new(bridge.Msg))
}

// toMsgIn is toMsg into m, a zero message.
func (wm *wireMsg) toMsgIn(m *bridge.Msg) (*bridge.Msg, error) {
	m.Subject, m.Reply = wm.Subject, wm.Reply
	switch {
	case (wm.Data != nil || wm.plainData != nil) && wm.DataBase64 != nil:
		return nil, badRequest("give data or data_base64, not both")
	case wm.plainData != nil:
		m.Data = wm.plainData
	case wm.Data != nil:
		m.Data = []byte(*wm.Data)
	case wm.DataBase64 != nil:
		b, err := base64.StdEncoding.DecodeString(*wm.DataBase64)
		if err != nil {
			return nil, badRequest("data_base64 is not valid base64")
		}
		m.Data = b
	}
	if len(wm.Headers) > 0 && !bytes.Equal(wm.Headers, []byte("null")) {
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(wm.Headers, &raw); err != nil {
			return nil, fmt.Errorf("%w: headers must be an object of strings or string arrays", bridge.ErrBadHeader)
		}
		m.Header = make(map[string][]string, len(raw))
		for k, v := range raw {
			var one string
			if err := json.Unmarshal(v, &one); err == nil {
				m.Header[k] = []string{one}
				continue
			}
			var many []string
			if err := json.Unmarshal(v, &many); err != nil {
				return nil, fmt.Errorf("%w: header %q must be a string or an array of strings", bridge.ErrBadHeader, k)
			}
			m.Header[k] = many
		}
		if err := bridge.ValidateHeaders(m.Header); err != nil {
			return nil, err
		}
	}
	return m, nil
}

type batchResult struct {
	Index  int    `json:"index"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

// readBatch reads an NDJSON batch body (see checkBatchType) into mem:
// one JSON entry per line, blank lines skipped, at most MaxBatchEntries
// entries in at most MaxBatchBytes; the one parser of both batch kinds.
// parse turns a line into a message; an entry it refuses is that entry's
// error (mem.errs[i]), not the batch's, and mem.msgs[i] is then an empty
// message.
func (s *Server) readBatch(w http.ResponseWriter, r *http.Request, mem *batchMem, parse func(line []byte) (*bridge.Msg, error)) error {
	body, err := s.readBodyInto(w, r, s.cfg.MaxBatchBytes, mem.body[:0])
	if err != nil {
		return err
	}
	mem.body = body
	n := min(bytes.Count(body, []byte("\n"))+1, s.cfg.MaxBatchEntries)
	msgs, errs := slices.Grow(mem.msgs[:0], n), slices.Grow(mem.errs[:0], n)
	defer func() { mem.msgs, mem.errs = msgs, errs }()
	for rest := body; len(rest) > 0; {
		line := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line, rest = rest[:i], rest[i+1:]
		} else {
			rest = nil
		}
		if line = bytes.TrimSpace(line); len(line) == 0 {
			continue
		}
		if len(msgs) == s.cfg.MaxBatchEntries {
			return badRequest("more than %d entries in one batch", s.cfg.MaxBatchEntries)
		}
		m, err := parse(line)
		if m == nil {
			m = &bridge.Msg{}
		}
		msgs, errs = append(msgs, m), append(errs, err)
	}
	if len(msgs) == 0 {
		return badRequest("empty batch: send one JSON entry per line")
	}
	return nil
}

// batchMem is a batch request's memory: its body, its entries and their
// errors, and the scanner's messages. The core batch handler takes one
// from batchPool and puts it back once it has answered, when nothing
// refers to the body or the messages any more (nats.go copies what it
// publishes), so a busy gateway reads batches without allocating.
type batchMem struct {
	body []byte
	msgs []*bridge.Msg
	errs []error
	sc   entryScanner
}

var batchPool = sync.Pool{New: func() any { return new(batchMem) }}

// Past these a batch's memory is not kept for the next one: a rare huge
// batch should not stay in every pooled batchMem.
const (
	poolBodyMax    = 1 << 20
	poolEntriesMax = 4096
)

// put clears mem (the entries' errors and messages hold on to other
// memory) and returns it to batchPool.
func (mem *batchMem) put() {
	clear(mem.msgs)
	clear(mem.errs)
	mem.sc.reset()
	if cap(mem.body) > poolBodyMax {
		mem.body = nil
	}
	if cap(mem.msgs) > poolEntriesMax {
		mem.msgs, mem.errs = nil, nil
	}
	batchPool.Put(mem)
}

// batchIn is a batch read and checked: its token's connection (the
// caller releases it), and every entry with its error, in mem.
type batchIn struct {
	c    *bridge.Conn
	msgs []*bridge.Msg
	errs []error
}

// validEntries is the entries without an error, with, in at, their
// indexes among all.
func (b *batchIn) validEntries() (valid []*bridge.Msg, at []int) {
	valid, at = make([]*bridge.Msg, 0, len(b.msgs)), make([]int, 0, len(b.msgs))
	for i, m := range b.msgs {
		if b.errs[i] == nil {
			valid, at = append(valid, m), append(at, i)
		}
	}
	return valid, at
}

// openBatch is the prologue both batch kinds share: the token, the
// Content-Type, the connection and the entries, read into mem and parsed
// by parse.
func (s *Server) openBatch(w http.ResponseWriter, r *http.Request, mem *batchMem, parse func(line []byte) (*bridge.Msg, error)) (*batchIn, error) {
	tok, err := s.bearer(r)
	if err != nil {
		return nil, err
	}
	if err := checkBatchType(r); err != nil {
		return nil, err
	}
	c, err := s.connect(r.Context(), r.RemoteAddr, tok)
	if err != nil {
		return nil, err
	}
	if err := s.readBatch(w, r, mem, parse); err != nil {
		c.Release()
		return nil, err
	}
	return &batchIn{c: c, msgs: mem.msgs, errs: mem.errs}, nil
}

// checkBatchType refuses a batch body that does not say it is NDJSON.
func checkBatchType(r *http.Request) error {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/x-ndjson" && mt != "application/jsonl" {
		return fmt.Errorf("%w: send Content-Type: application/x-ndjson, one JSON entry per line", errUnsupported)
	}
	return nil
}

// parseEntry decodes a core batch entry, with sc's fast path when the
// entry has the usual shape.
func (sc *entryScanner) parseEntry(line []byte) (*bridge.Msg, error) {
	var wm wireMsg
	if sc.scan(line, &wm, nil) {
		return wm.toMsgIn(sc.newMsg())
	}
	return decodeEntry(line)
}

// decodeEntry decodes a core batch entry with encoding/json.
func decodeEntry(line []byte) (*bridge.Msg, error) {
	var wm wireMsg
	if err := json.Unmarshal(line, &wm); err != nil {
		return nil, badRequest("entry is not a JSON object: %v", err)
	}
	return wm.toMsg()
}

// handlePublishBatch handles "POST /v1/publish": NDJSON entries, one
// confirmation round trip for all; 204 when all were published, else 207
// with a result per entry. Bad entries do not stop good ones.
func (s *Server) handlePublishBatch() http.HandlerFunc {
	return apiHandler(func(w http.ResponseWriter, r *http.Request) error {
		mem := batchPool.Get().(*batchMem)
		defer mem.put()
		b, err := s.openBatch(w, r, mem, mem.sc.parseEntry)
		if err != nil {
			return err
		}
		defer b.c.Release()
		c, msgs, errs := b.c, b.msgs, b.errs
		c.PublishBatch(r.Context(), msgs, errs, s.cfg.MaxSubjectLen)
		failed, unavailable := 0, 0
		for _, err := range errs {
			if err != nil {
				failed++
				if errors.Is(err, bridge.ErrUnavailable) {
					unavailable++
				}
			}
		}
		s.metrics.msgsIn.WithLabelValues("http").Add(float64(len(msgs) - failed))
		switch {
		case failed == 0:
			w.WriteHeader(http.StatusNoContent)
		case unavailable == len(msgs):
			return errs[0]
		default: // the results are built only for a 207
			results := make([]batchResult, len(msgs))
			for i, err := range errs {
				results[i] = batchResult{Index: i, Status: http.StatusNoContent}
				if err != nil {
					results[i].Status, _ = classify(err)
					results[i].Detail = err.Error()
				}
			}
			writeJSON(w, http.StatusMultiStatus, map[string]any{"results": results})
		}
		return nil
	})
}
