package httpapi

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func FuzzParseFrame(f *testing.F) {
	for _, s := range []string{
		`{"op":"connect","token":"abc"}`,
		`{"op":"sub","sid":"s1","subject":"orders.>","queue":"q"}`,
		`{"op":"unsub","sid":"s1"}`,
		`{"op":"pub","subject":"x","data":"hi","headers":{"A":"1","B":["2","3"]},"reply":"r","id":"p1"}`,
		`{"op":"pub","subject":"x","data_base64":"AAE=","id":"p2"}`,
		`{"op":"req","id":"r1","subject":"x","data":"q","timeout_ms":2000}`,
		`{"op":"ping"}`, `{}`, `[]`, `null`, `{"op":1}`, `{"op":"sub","sid":"a\"b"}`,
		`{"op":"pub","headers":{"A":5}}`, `{"op":"pub","data":"a","data_base64":"YQ=="}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := parseFrame(data)
		if err != nil {
			return
		}
		if fr.Op == "" || !validID(fr.Sid) || !validID(fr.ID) {
			t.Fatalf("accepted %+v", fr)
		}
		m, err := fr.toMsg()
		if err != nil {
			return
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

func FuzzNATSHeaders(f *testing.F) {
	f.Add("NatsH-Trace", "1")
	f.Add("Natsh-", "x")
	f.Add("NatsH-A", "v\r\nInjected: yes")
	f.Add("X-Other", "y")
	f.Add("NATSH-Lower", "\x7f")
	f.Fuzz(func(t *testing.T, name, value string) {
		h := http.Header{}
		h[name] = []string{value}
		out, err := natsHeaders(h)
		if err != nil {
			return
		}
		for k, vs := range out {
			if k == "" || strings.ContainsAny(k, " :\r\n\t") {
				t.Fatalf("NATS header name %q from %q", k, name)
			}
			for _, v := range vs {
				for _, c := range []byte(v) {
					if (c < ' ' && c != '\t') || c == 0x7f {
						t.Fatalf("NATS header value %q from %q", v, value)
					}
				}
			}
		}
		if len(out) > 0 && !strings.HasPrefix(strings.ToLower(name), "natsh-") {
			t.Fatalf("%q mapped without the prefix", name)
		}
	})
}

func FuzzParseTimeout(f *testing.F) {
	for _, s := range []string{"", "500ms", "2s", "1500", "0", "-1", "1h", "abc", "9223372036854775807", "1e3", "1.5s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parseTimeout(s, 5*time.Second, time.Minute)
		if err == nil && (d <= 0 || d > time.Minute) {
			t.Fatalf("timeout %q accepted as %v", s, d)
		}
	})
}
