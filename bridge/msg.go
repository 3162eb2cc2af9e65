package bridge

import (
	"encoding/base64"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
)

// Msg is a NATS message as the gateway carries it. A Msg delivered to
// subscribers is shared by all of them and must not be modified.
type Msg struct {
	Subject string
	Reply   string
	Header  map[string][]string
	Data    []byte

	// Stored is set on messages of a JetStream subscription (a pointer, so
	// core messages stay as small as they were).
	Stored *Stored

	once sync.Once
	obj  []byte
	wire int // WireSize, for delivered messages
}

// Stored is where a stream keeps a message: the stream, the message's
// stream sequence and when the stream stored it.
type Stored struct {
	Stream string
	Seq    uint64
	Time   time.Time
}

// Seq is the message's stream sequence, or 0 for a core message.
func (m *Msg) Seq() uint64 {
	if m.Stored == nil {
		return 0
	}
	return m.Stored.Seq
}

func fromNATS(m *nats.Msg) *Msg {
	msg := &Msg{Subject: m.Subject, Reply: m.Reply, Header: m.Header, Data: m.Data}
	msg.wire = msg.size() + len(m.Subject) + len(m.Reply)
	return msg
}

// WireSize is roughly what a delivered message weighs: its subjects,
// headers and payload. Computed once, however many subscribers share it.
func (m *Msg) WireSize() int {
	if m.wire == 0 {
		return m.size() + len(m.Subject) + len(m.Reply)
	}
	return m.wire
}

func (m *Msg) toNATS() *nats.Msg {
	nm := &nats.Msg{Subject: m.Subject, Reply: m.Reply, Data: m.Data}
	if len(m.Header) > 0 {
		nm.Header = nats.Header(m.Header)
	}
	return nm
}

// size is the number of bytes the message takes against max_payload, as
// nats-server counts it: headers and payload.
func (m *Msg) size() int {
	n := len(m.Data)
	if len(m.Header) > 0 {
		n += len("NATS/1.0\r\n\r\n")
		for k, vs := range m.Header {
			for _, v := range vs {
				n += len(k) + len(v) + 4
			}
		}
	}
	return n
}

// JSON returns the message object of the API contract,
// {"subject":…,"reply":…,"headers":{…},"data"|"data_base64":…}, with
// "stream", "seq" and "time" for JetStream messages, encoded once
// and shared by every subscriber the message goes to. Header names are
// sorted so the encoding is deterministic.
func (m *Msg) JSON() []byte {
	m.once.Do(func() { m.obj = m.appendFields(append(make([]byte, 0, 64+len(m.Data)*5/4), '{')) })
	return m.obj
}

// appendFields appends the message object's fields and its closing brace.
func (m *Msg) appendFields(b []byte) []byte {
	b = append(b, `"subject":`...)
	b = appendJSONString(b, m.Subject)
	if m.Reply != "" {
		b = append(b, `,"reply":`...)
		b = appendJSONString(b, m.Reply)
	}
	if len(m.Header) > 0 {
		b = append(b, `,"headers":{`...)
		names := make([]string, 0, len(m.Header))
		for k := range m.Header {
			names = append(names, k)
		}
		slices.Sort(names)
		for i, k := range names {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, k)
			b = append(b, ":["...)
			for j, v := range m.Header[k] {
				if j > 0 {
					b = append(b, ',')
				}
				b = appendJSONString(b, v)
			}
			b = append(b, ']')
		}
		b = append(b, '}')
	}
	if utf8.Valid(m.Data) {
		b = append(b, `,"data":`...)
		b = appendJSONString(b, string(m.Data))
	} else {
		b = append(b, `,"data_base64":"`...)
		b = base64.StdEncoding.AppendEncode(b, m.Data)
		b = append(b, '"')
	}
	if m.Stored != nil {
		b = m.Stored.appendFields(b)
	}
	return append(b, '}')
}

// timeLayout is RFC 3339 with nanoseconds, all nine digits always.
const timeLayout = "2006-01-02T15:04:05.000000000Z07:00"

// appendFields appends a stored message's stream, seq and time fields.
func (st *Stored) appendFields(b []byte) []byte {
	b = append(b, `,"stream":`...)
	b = appendJSONString(b, st.Stream)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, st.Seq, 10)
	b = append(b, `,"time":"`...)
	b = st.Time.UTC().AppendFormat(b, timeLayout)
	return append(b, '"')
}

// FormatTime formats t as message objects carry times: RFC 3339 in UTC
// with nanoseconds.
func FormatTime(t time.Time) string { return t.UTC().Format(timeLayout) }

// JSONFields returns JSON() without its opening brace, so a caller can
// prefix fields of its own (the WebSocket "op" and "sid").
func (m *Msg) JSONFields() []byte { return m.JSON()[1:] }

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string the way encoding/json does
// without HTML escaping: invalid UTF-8 becomes U+FFFD, and U+2028/U+2029
// are escaped so the output is also valid JavaScript.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= ' ' && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
