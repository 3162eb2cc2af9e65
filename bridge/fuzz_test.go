package bridge

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

func FuzzValidateSubject(f *testing.F) {
	for _, s := range []string{"orders.eu", "a.*.c", "a.>", ">", "*", "a..b", ".a", "a.", "a b", "a\tb", "a\r\nb",
		"\xff", "orders.\u2028", "é.ü", strings.Repeat("a.", 130), "_INBOX.abc.*", "a.>.b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		pubErr := ValidatePublishSubject(s, 0)
		subErr := ValidateSubscribeSubject(s, 0)
		if pubErr == nil && subErr != nil {
			t.Fatalf("%q publishable but not subscribable: %v", s, subErr)
		}
		if subErr != nil {
			return
		}
		// What passes is a subject NATS can carry: bounded, valid UTF-8,
		// no whitespace, non-empty tokens, '>' only last.
		if len(s) == 0 || len(s) > DefaultMaxSubjectLen || !utf8.ValidString(s) || strings.ContainsAny(s, " \t\r\n\x00") {
			t.Fatalf("accepted %q", s)
		}
		toks := strings.Split(s, ".")
		for i, tok := range toks {
			if tok == "" || (tok == ">" && i != len(toks)-1) {
				t.Fatalf("accepted %q", s)
			}
			if pubErr == nil && (tok == "*" || tok == ">") {
				t.Fatalf("publishable wildcard %q", s)
			}
		}
	})
}

func FuzzMsgJSON(f *testing.F) {
	f.Add("orders.eu", "reply", "Trace", "1", []byte("hello"))
	f.Add("a", "", "", "", []byte{0xff, 0, 1})
	f.Add("q\"uote\\", "r\u2028", "K", "v\x01\"", []byte("<html>&\u2029\xed\xa0\x80"))
	f.Fuzz(func(t *testing.T, subject, reply, hk, hv string, data []byte) {
		m := &Msg{Subject: subject, Reply: reply, Data: data}
		if hk != "" {
			m.Header = map[string][]string{hk: {hv, hv}}
		}
		b := m.JSON()
		var got struct {
			Subject    string              `json:"subject"`
			Reply      *string             `json:"reply"`
			Headers    map[string][]string `json:"headers"`
			Data       *string             `json:"data"`
			DataBase64 []byte              `json:"data_base64"`
		}
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("invalid JSON %q: %v", b, err)
		}
		// Strings are encoded as encoding/json does (each invalid byte
		// becomes U+FFFD).
		var want string
		ref, _ := json.Marshal(subject)
		_ = json.Unmarshal(ref, &want)
		if got.Subject != want {
			t.Fatalf("subject %q, want %q", got.Subject, want)
		}
		if (reply == "") != (got.Reply == nil) {
			t.Fatalf("reply presence wrong in %s", b)
		}
		switch {
		case utf8.Valid(data):
			if got.Data == nil || *got.Data != string(data) || got.DataBase64 != nil {
				t.Fatalf("data %q encoded as %s", data, b)
			}
		default:
			if got.Data != nil || string(got.DataBase64) != string(data) {
				t.Fatalf("binary %q encoded as %s", data, b)
			}
		}
		if strings.ContainsAny(string(b), "\n\r\u2028\u2029") {
			t.Fatalf("encoding breaks an SSE or NDJSON line: %q", b)
		}
		if string(m.JSONFields()) != string(b[1:]) {
			t.Fatal("JSONFields is not JSON without its brace")
		}
	})
}

func FuzzParseTokens(f *testing.F) {
	f.Add([]byte(`{"tokens":[{"name":"orders-app","token":"s3cret-VALUE","publish":{"allow":["orders.>"],"deny":[]},"subscribe":{"allow":["orders.>","_INBOX.>"]}}]}`))
	f.Add([]byte(`{"tokens":[{"name":"a","token":"$2a$11$abcdefghijklmnopqrstuu5Mo6Y7Zv9f6b0qEdSbjQkG0v4lNhbFBC"}]}`))
	f.Add([]byte(`{"tokens":[{"name":"a","token":"s3cret-VALUE","publish":{"allow":["a b"]}}]}`))
	f.Add([]byte(`{"tokens":[{"name":"a","token":"s3cret-VALUE"},{"name":"b","token":"s3cret-VALUE"}]}`))
	f.Add([]byte(`{"tokens":[{"name":"a","token":5}]}`))
	f.Add([]byte(`{"tokens":[{"name":"a","token":"s3cret-VALUE","publsh":{}}]}`))
	f.Add([]byte(`{"tokens":[{"name":"a","token":"s3cret-VALUE` + "\xff" + `"`))
	f.Fuzz(func(t *testing.T, data []byte) {
		tokens, err := ParseTokens(data)
		if err != nil {
			// An error never repeats a token from the file.
			var raw struct{ Tokens []struct{ Token any } }
			_ = json.Unmarshal(data, &raw)
			for _, tk := range raw.Tokens {
				if s, ok := tk.Token.(string); ok && len(s) >= 6 && strings.Contains(err.Error(), s) {
					t.Fatalf("error %q contains the token %q", err, s)
				}
			}
			if strings.Contains(err.Error(), "s3cret-VALUE") {
				t.Fatalf("error %q contains a token", err)
			}
			return
		}
		names := map[string]bool{}
		for _, tk := range tokens {
			if tk.Name == "" || tk.Token == "" || names[tk.Name] {
				t.Fatalf("accepted %+v", tk)
			}
			names[tk.Name] = true
		}
		newTokenAuth(tokens) // builds without panicking
	})
}

func FuzzParseViolation(f *testing.F) {
	for _, s := range []string{
		`nats: permissions violation: Permissions Violation for Publish to "orders.x"`,
		`nats: permissions violation: Permissions Violation for Subscription to "a.>" using queue "q"`,
		`nats: permissions violation: Permissions Violation for Publish with Reply of "r"`,
		`Permissions Violation for Subscription to "a\"b"`,
		`Permissions Violation for Publish to "unterminated`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, ok := parseViolation(s)
		if ok && (v.kind < denyPublish || v.kind > denySubscribe) {
			t.Fatalf("%q parsed as kind %d", s, v.kind)
		}
	})
}

// FuzzErrTap builds a valid server-to-client stream from script (one frame
// per byte: messages whose headers and payloads are taken from payload,
// which may read like -ERR lines, real permission violations, other
// control lines), feeds it to an errTap in chunks whose sizes come from
// cuts, and checks that exactly the real violations were recorded, in
// order. It also feeds payload itself to a tap as raw bytes: whatever they
// are, the tap must not panic nor keep more than maxTapLine of a line.
func FuzzErrTap(f *testing.F) {
	f.Add([]byte{0, 2, 1, 4, 3, 0, 5, 6, 7, 2}, fakeDeny, []byte{1, 7, 200, 3})
	f.Add([]byte{1, 1, 2, 2, 0}, "NATS/1.0\r\nX: "+fakeDeny+"\r\n", []byte{13})
	f.Add([]byte{7, 0, 0, 2}, "\r\n-ERR 'Permissions Violation for Subscription to \"x\" using queue \"q\"'\r\nPONG\r\n", []byte{255, 1})
	f.Add([]byte{0, 8, 16}, "", []byte{})
	f.Add([]byte{2, 3, 10, 11}, "MSG noise 1 99\r\n", []byte{2, 2, 2})
	f.Add([]byte{}, realStream, []byte{5})
	f.Fuzz(func(t *testing.T, script []byte, payload string, cuts []byte) {
		if len(script) > 32 || len(payload) > 4096 {
			return
		}
		var stream strings.Builder
		var want []violation
		for i, op := range script {
			part := payload[:int(op)*len(payload)/256]
			subj := fmt.Sprintf("s%d", i)
			switch op % 8 {
			case 0:
				stream.WriteString(msgFrame("MSG", "noise 1", "", part))
			case 1:
				stream.WriteString(msgFrame("HMSG", "noise 1 _INBOX.r", part, payload[len(part):]))
			case 2:
				fmt.Fprintf(&stream, "-ERR 'Permissions Violation for Publish to %q'\r\n", subj)
				want = append(want, violation{kind: denyPublish, subject: subj})
			case 3:
				fmt.Fprintf(&stream, "-ERR 'Permissions Violation for Subscription to %q using queue \"q\"'\r\n", subj)
				want = append(want, violation{kind: denySubscribe, subject: subj, queue: "q"})
			case 4:
				stream.WriteString("PING\r\nPONG\r\n")
			case 5:
				stream.WriteString("+OK\r\n")
			case 6:
				stream.WriteString("-ERR 'Maximum Subscriptions Exceeded'\r\n")
			case 7:
				fmt.Fprintf(&stream, "INFO {\"server_id\":%q}\r\n", subj)
			}
		}
		b := []byte(stream.String())
		l := newTestLog()
		tap := newErrTap(l)
		for i := 0; len(b) > 0; i++ {
			n := len(b)
			if len(cuts) > 0 {
				n = min(n, int(cuts[i%len(cuts)])+1)
			}
			if err := tap.scan(b[:n]); err != nil {
				t.Fatalf("scan of a valid stream: %v", err)
			}
			b = b[n:]
		}
		if got := l.recorded(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("recorded %v, want %v", got, want)
		}

		raw := newErrTap(newTestLog())
		_ = raw.scan([]byte(payload))
		if cap(raw.line) > maxTapLine {
			t.Fatalf("the tap keeps %d bytes of a line", cap(raw.line))
		}
	})
}
