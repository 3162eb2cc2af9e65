package httpapi

import (
	"bytes"
	"encoding/json"
	"unicode/utf8"

	"github.com/natsgate/natsgate/bridge"
)

// entryScanner decodes batch entries of the usual shape without
// encoding/json's reflection, which is most of a batch's cost: a flat
// object of the keys subject, reply, data, data_base64 (each a string or
// null), headers (any JSON value, kept raw as encoding/json would) and,
// for stored entries, msg_id. Anything else — another key, a key in
// another case or escaped, a value of another type, bad JSON — is not
// decoded but refused, and the caller decodes the entry with
// encoding/json instead: an entry is accepted here only when
// encoding/json would accept it with the same result, and every error
// is encoding/json's (FuzzScanEntry holds the two to that).
//
// The last subject is kept, so a batch to one subject allocates it once.
type entryScanner struct {
	lastSubject string
	// blocks are the messages newMsg hands out, msgBlock to a block;
	// used counts those handed out. reset keeps the blocks for the next
	// batch.
	blocks [][]bridge.Msg
	used   int
}

// newMsg is a zero message from a block shared with the batch's next
// ones: one allocation per msgBlock entries, none once a reused scanner
// has blocks enough.
func (sc *entryScanner) newMsg() *bridge.Msg {
	b, i := sc.used/msgBlock, sc.used%msgBlock
	if b == len(sc.blocks) {
		sc.blocks = append(sc.blocks, make([]bridge.Msg, msgBlock))
	}
	sc.used++
	return &sc.blocks[b][i]
}

const msgBlock = 64

// reset zeroes the messages handed out, keeping at most poolEntriesMax
// of them for the next batch, and forgets the last subject.
func (sc *entryScanner) reset() {
	for _, b := range sc.blocks[:(sc.used+msgBlock-1)/msgBlock] {
		clear(b)
	}
	keep := min(len(sc.blocks), poolEntriesMax/msgBlock)
	clear(sc.blocks[keep:])
	sc.blocks = sc.blocks[:keep]
	sc.used, sc.lastSubject = 0, ""
}

// scan decodes line into wm (and, if msgID is not nil, the key msg_id
// into it); false means "decode it with encoding/json", into a fresh
// value: wm may have been partly filled.
func (sc *entryScanner) scan(line []byte, wm *wireMsg, msgID *string) bool {
	i := skipSpace(line, 0)
	if i == len(line) || line[i] != '{' {
		return false
	}
	i = skipSpace(line, i+1)
	if i < len(line) && line[i] == '}' {
		return skipSpace(line, i+1) == len(line)
	}
	for {
		key, next, _, ok := plainString(line, i)
		if !ok {
			return false
		}
		i = skipSpace(line, next)
		if i == len(line) || line[i] != ':' {
			return false
		}
		i = skipSpace(line, i+1)
		if i == len(line) {
			return false
		}
		if string(key) == "headers" {
			end := valueEnd(line, i)
			if end < 0 || !json.Valid(line[i:end]) {
				return false
			}
			wm.Headers = json.RawMessage(line[i:end])
			i = end
		} else {
			var (
				s      string
				plain  []byte
				isNull bool
			)
			s, plain, isNull, i, ok = sc.stringValue(line, i, string(key))
			if !ok {
				return false
			}
			switch string(key) {
			case "subject":
				if !isNull { // encoding/json leaves a string field alone for null
					wm.Subject = s
				}
			case "reply":
				if !isNull {
					wm.Reply = s
				}
			case "data":
				if wm.Data, wm.plainData = nil, plain; plain == nil {
					wm.Data = stringOrNil(s, isNull)
				}
			case "data_base64":
				wm.DataBase64 = stringOrNil(s, isNull)
			case "msg_id":
				if msgID == nil {
					return false
				}
				if !isNull {
					*msgID = s
				}
			default:
				return false
			}
		}
		i = skipSpace(line, i)
		if i == len(line) {
			return false
		}
		switch line[i] {
		case ',':
			i = skipSpace(line, i+1)
		case '}':
			return skipSpace(line, i+1) == len(line)
		default:
			return false
		}
	}
}

// stringOrNil is s's address, or nil for null.
func stringOrNil(s string, isNull bool) *string {
	if isNull {
		return nil
	}
	p := new(string)
	*p = s
	return p
}

// stringValue reads the string or null at line[i:] of key, returning the
// index after it. A string with escapes is unquoted by encoding/json
// itself; one without is taken as it is if it is valid UTF-8
// (encoding/json would replace invalid bytes). data's plain string is
// returned as its bytes in line (plain), uncopied; a subject the same as
// the last one is the last one's string.
func (sc *entryScanner) stringValue(line []byte, i int, key string) (s string, plain []byte, isNull bool, next int, ok bool) {
	if bytes.HasPrefix(line[i:], []byte("null")) {
		return "", nil, true, i + 4, true
	}
	raw, next, ascii, ok := plainString(line, i)
	switch {
	case !ok:
		end := quotedEnd(line, i)
		if end < 0 {
			return "", nil, false, 0, false
		}
		s, ok = unquoteJSON(line[i:end])
		return s, nil, false, end, ok
	case !ascii && !utf8.Valid(raw):
		return "", nil, false, 0, false
	case key == "data":
		return "", raw, false, next, true
	case key == "subject":
		if string(raw) != sc.lastSubject {
			sc.lastSubject = string(raw)
		}
		return sc.lastSubject, nil, false, next, true
	}
	return string(raw), nil, false, next, true
}

// unquoteJSON is encoding/json's reading of the quoted string q.
func unquoteJSON(q []byte) (string, bool) {
	var s string
	err := json.Unmarshal(q, &s)
	return s, err == nil
}

// plainString reads a string without escapes or control characters at
// line[i:]: its contents, the index after its closing quote, and whether
// it is all ASCII (so valid UTF-8 without a second look).
func plainString(line []byte, i int) (contents []byte, next int, ascii, ok bool) {
	if i >= len(line) || line[i] != '"' {
		return nil, 0, false, false
	}
	var high byte
	for j := i + 1; j < len(line); j++ {
		switch c := line[j]; {
		case c == '"':
			return line[i+1 : j], j + 1, high < utf8.RuneSelf, true
		case c == '\\' || c < ' ':
			return nil, 0, false, false
		default:
			high |= c
		}
	}
	return nil, 0, false, false
}

// quotedEnd is the index after the string (escapes allowed) that starts
// at line[i], or -1.
func quotedEnd(line []byte, i int) int {
	if i >= len(line) || line[i] != '"' {
		return -1
	}
	for j := i + 1; j < len(line); j++ {
		switch line[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return -1
}

// valueEnd is the index after the JSON value that starts at line[i],
// found by following strings and nesting only: json.Valid judges the
// value. -1 when it does not end.
func valueEnd(line []byte, i int) int {
	depth := 0
	for j := i; j < len(line); j++ {
		switch c := line[j]; {
		case c == '"':
			end := quotedEnd(line, j)
			if end < 0 {
				return -1
			}
			if depth == 0 {
				return end
			}
			j = end - 1
		case c == '{' || c == '[':
			depth++
		case c == '}' || c == ']':
			if depth == 0 { // a scalar, ended by the entry's closing brace
				return j
			}
			if depth--; depth == 0 {
				return j + 1
			}
		case depth == 0 && (c == ',' || c == ' ' || c == '\t' || c == '\r' || c == '\n'):
			return j
		}
	}
	if depth == 0 {
		return len(line)
	}
	return -1
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}
