package bridge

import (
	"bytes"
	"errors"
	"net"
	"strings"
)

// errTap follows the NATS protocol a server sends one connection, as the
// bytes pass to nats.go, and records every permission violation (-ERR
// 'Permissions Violation …') in the connection's permissionLog before
// nats.go is given the bytes that follow it. When a flush returns, the PONG
// has been parsed, so every violation the server sent before it is already
// recorded: the verdict does not depend on nats.go's LastError, which its
// read loop overwrites (ErrBadHeaderMsg for every message with a malformed
// header block, which any tenant publishing to a subject this token
// subscribes to can send), nor on when its async error handler runs.
//
// It frames the stream as nats.go's parser does (nats.go parser.go): every
// operation is a line through '\n', except MSG and HMSG, whose line is
// followed by the number of bytes its last argument gives, one more byte,
// and everything through the next '\n'. So a payload or a header that
// reads "-ERR 'Permissions Violation …" is never taken for a line. A stream
// it cannot frame is one nats.go would reject too (or one announcing a
// payload over maxTapSize, which no server sends): the tap then fails the
// read (errTapLost) without handing over its bytes, nats.go reconnects, and
// nothing sent before is confirmed.
type errTap struct {
	log  *permissionLog
	skip int  // payload bytes (and the byte after them) still to pass over
	eol  bool // after a payload: pass over everything through '\n'
	lost error

	// A control line begun in an earlier read: its first maxTapLine bytes
	// and, past that, its last tapTail bytes (where MSG sizes are).
	line  []byte
	over  bool
	tail  [tapTail]byte
	tailN int
}

const (
	// maxTapLine bounds what the tap keeps of a control line split across
	// reads. Longer lines are INFO (ignored), MSG and HMSG (only their last
	// argument matters, kept in the tail) or an -ERR, whose text is then
	// truncated: a truncated permission violation is still recorded, as
	// one the gateway cannot attribute.
	maxTapLine = 16 << 10
	tapTail    = 64
	// maxTapSize bounds the payload size the tap accepts in a MSG line;
	// nats.go's own parser would overflow past 18 digits.
	maxTapSize = 1 << 40
)

var errTapLost = errors.New("natsgate: the NATS server sent a protocol the gateway could not follow")

func newErrTap(log *permissionLog) *errTap { return &errTap{log: log} }

// scan reads the next bytes the server sent. A non-nil error means the
// bytes must not be handed to nats.go.
func (t *errTap) scan(p []byte) error {
	for len(p) > 0 && t.lost == nil {
		switch {
		case t.skip > 0:
			n := min(t.skip, len(p))
			t.skip -= n
			p = p[n:]
		case t.eol:
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				return nil
			}
			t.eol = false
			p = p[i+1:]
		default:
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				t.keep(p)
				return nil
			}
			if len(t.line) > 0 || t.over {
				t.keep(p[:i])
				t.control(t.line, t.over, t.tail[:t.tailN])
				t.resetLine()
			} else {
				t.control(p[:i], false, nil)
			}
			p = p[i+1:]
		}
	}
	return t.lost
}

func (t *errTap) keep(b []byte) {
	if !t.over {
		room := maxTapLine - len(t.line)
		if len(b) <= room {
			t.line = append(t.line, b...)
			return
		}
		t.line = append(t.line, b[:room]...)
		b = b[room:]
		t.over = true
	}
	if len(b) >= tapTail {
		t.tailN = copy(t.tail[:], b[len(b)-tapTail:])
		return
	}
	if t.tailN+len(b) > tapTail {
		drop := t.tailN + len(b) - tapTail
		t.tailN = copy(t.tail[:], t.tail[drop:t.tailN])
	}
	t.tailN += copy(t.tail[t.tailN:], b)
}

func (t *errTap) resetLine() {
	if cap(t.line) > 4<<10 {
		t.line = nil // an INFO line of a big cluster need not stay allocated
	}
	t.line, t.over, t.tailN = t.line[:0], false, 0
}

// control handles one control line, without its '\n'. When over, line is
// only the line's beginning and tail its end.
func (t *errTap) control(line []byte, over bool, tail []byte) {
	if len(line) == 0 {
		t.lost = errTapLost
		return
	}
	switch line[0] {
	case 'M', 'm':
		t.msg(line, over, tail, "MSG", 3)
	case 'H', 'h':
		t.msg(line, over, tail, "HMSG", 4)
	case '-':
		if !hasOp(line, "-ERR") {
			t.lost = errTapLost
			return
		}
		t.onErr(string(line[len("-ERR"):]))
	case 'P', 'p', '+', 'I', 'i':
		// PING, PONG, +OK, INFO: nothing to learn, no payload follows.
	default:
		t.lost = errTapLost
	}
}

// msg handles a MSG or HMSG line: subject, sid, optional reply, (header
// size,) total size.
func (t *errTap) msg(line []byte, over bool, tail []byte, op string, minArgs int) {
	if !hasOp(line, op) {
		t.lost = errTapLost
		return
	}
	args := line[len(op):]
	if over {
		// The size is the last argument, whole in the tail when a
		// separator precedes it there; the count is not checked.
		args = tail
	}
	n, last := lastArg(args)
	switch {
	case !over && n != minArgs && n != minArgs+1,
		over && (n == 0 || n == 1 && !isArgSep(args[0])):
		t.lost = errTapLost
		return
	}
	size, ok := parseSize(last)
	if !ok {
		t.lost = errTapLost
		return
	}
	t.skip, t.eol = size+1, true
}

func (t *errTap) onErr(arg string) {
	// As nats.go's processErr and normalizeErr read it.
	s := strings.TrimSpace(arg)
	s = strings.TrimLeft(strings.TrimRight(s, "'"), "'")
	if !strings.HasPrefix(strings.ToLower(s), "permissions violation") {
		return
	}
	v, ok := parseViolation(s)
	if !ok {
		v = violation{kind: denyUnknown, subject: s}
	}
	t.log.record(v)
}

// hasOp reports whether line starts with op, in any ASCII case as nats.go
// accepts it, followed by a space or a tab.
func hasOp(line []byte, op string) bool {
	if len(line) <= len(op) || (line[len(op)] != ' ' && line[len(op)] != '\t') {
		return false
	}
	for i := range len(op) {
		if c, o := line[i], op[i]; c != o && (o < 'A' || o > 'Z' || c != o+('a'-'A')) {
			return false
		}
	}
	return true
}

func isArgSep(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// lastArg splits args as nats.go does (on spaces, tabs, CR and LF) and
// returns how many there are and the last one.
func lastArg(args []byte) (n int, last []byte) {
	start := -1
	for i, c := range args {
		if isArgSep(c) {
			if start >= 0 {
				n, last, start = n+1, args[start:i], -1
			}
		} else if start < 0 {
			start = i
		}
	}
	if start >= 0 {
		n, last = n+1, args[start:]
	}
	return n, last
}

func parseSize(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 13 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, n <= maxTapSize
}

// tapConn is a connection to a NATS server whose reads pass through an
// errTap. prefix holds bytes read before the connection was handed over
// (the INFO line a tapDialer read); they are returned first.
type tapConn struct {
	net.Conn
	prefix []byte
	tap    *errTap
}

func (c *tapConn) Read(p []byte) (int, error) {
	var (
		n   int
		err error
	)
	if len(c.prefix) > 0 {
		n = copy(p, c.prefix)
		c.prefix = c.prefix[n:]
	} else {
		n, err = c.Conn.Read(p)
	}
	if terr := c.tap.scan(p[:n]); terr != nil {
		return 0, terr
	}
	return n, err
}
