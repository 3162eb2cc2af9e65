package httpapi

import (
	"strings"
	"testing"

	"github.com/natsgate/natsgate/bridge"
)

// FuzzStoredEntry: an accepted stored batch entry has no reply subject,
// clean headers, and its msg_id, when given, as its only Nats-Msg-Id.
func FuzzStoredEntry(f *testing.F) {
	for _, s := range []string{
		`{"subject":"orders.a","data":"1","msg_id":"k1"}`,
		`{"subject":"orders.b","data_base64":"AAE=","headers":{"Nats-Expected-Last-Sequence":"2"}}`,
		`{"subject":"x","msg_id":"a","headers":{"Nats-Msg-Id":"b"}}`,
		`{"subject":"x","msg_id":"a\r\nB: c"}`, `{"subject":"x","reply":"r"}`, `{}`, `[]`, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		var sc entryScanner
		m, err := sc.parseStoredEntry(line)
		if err != nil {
			return
		}
		if m.Reply != "" {
			t.Fatalf("reply %q accepted", m.Reply)
		}
		if ids := m.Header[bridge.MsgIDHeader]; len(ids) > 1 {
			t.Fatalf("message ids %q", ids)
		}
		for k, vs := range m.Header {
			if strings.ContainsAny(k, " :\r\n") {
				t.Fatalf("header name %q accepted", k)
			}
			for _, v := range vs {
				if strings.ContainsAny(v, "\r\n\x00") {
					t.Fatalf("header value %q accepted", v)
				}
			}
		}
	})
}
