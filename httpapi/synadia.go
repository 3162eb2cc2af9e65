package httpapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"

	"github.com/natsgate/natsgate/bridge"
)

// Synadia's HTTP gateway's core routes, /v1/nats/subjects/{subject}:
// PUT publishes, POST requests, GET subscribes (SSE). They run the same
// code as /v1/publish, /v1/request and /v1/subscribe; only the message
// shape differs: Synadia's JSON message has "header" (not "headers") and
// its data always in standard base64.

// natsMsgJSON is a message in Synadia's JSON shape.
type natsMsgJSON struct {
	Subject string              `json:"subject"`
	Reply   string              `json:"reply,omitempty"`
	Header  map[string][]string `json:"header,omitempty"`
	Data    string              `json:"data"`
}

// appendNATSMsg appends m in Synadia's JSON shape, without a newline.
func appendNATSMsg(b []byte, m *bridge.Msg) []byte {
	buf := bytes.NewBuffer(b)
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	// Encoding strings, string slices and a string map cannot fail.
	_ = enc.Encode(natsMsgJSON{Subject: m.Subject, Reply: m.Reply, Header: m.Header, Data: base64.StdEncoding.EncodeToString(m.Data)})
	out := buf.Bytes()
	return out[:len(out)-1] // Encode's newline
}

// natsSubjectsFormat is Server-Sent Events as Synadia's gateway sends
// them: each message an event named "msg" whose data is the message in
// Synadia's JSON shape. Notices and keep-alives are those of sseFormat.
type natsSubjectsFormat struct{ sseFormat }

func (natsSubjectsFormat) appendMsg(b []byte, m *bridge.Msg) []byte {
	b = append(b, "event: msg\ndata: "...)
	b = appendNATSMsg(b, m)
	return append(b, "\n\n"...)
}

func natsSubjectsStream(*http.Request) streamFormat { return natsSubjectsFormat{} }

// handleNATSRequest handles "POST /v1/nats/subjects/{subject}": a
// request as /v1/request/{subject} makes it (timeout a duration or bare
// milliseconds). With Accept: application/json the reply comes as a
// message in Synadia's JSON shape; otherwise as /v1/request answers it.
func (s *Server) handleNATSRequest() http.HandlerFunc {
	return apiHandler(func(w http.ResponseWriter, r *http.Request) error {
		reply, err := s.request(w, r)
		if err != nil {
			return err
		}
		if !wantsJSON(r) {
			writeReply(w, reply)
			return nil
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(append(appendNATSMsg(nil, reply), '\n'))
		return nil
	})
}
