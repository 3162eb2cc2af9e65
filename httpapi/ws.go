package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/natsgate/natsgate/bridge"
)

// WebSocket close codes of the session protocol (README, "Close codes").
const (
	closeMalformed    websocket.StatusCode = 4400 // malformed frame or protocol misuse (final)
	closeUnauthorized websocket.StatusCode = 4401 // no, rejected or revoked token (final)
	closeNoConnect    websocket.StatusCode = 4408 // no connect frame in time (final)
	closeAuthLimited  websocket.StatusCode = 4429 // too many failed authentications from this address
)

// WSConfig configures WebSocket sessions. Zero values mean the defaults
// stated on each field.
type WSConfig struct {
	// ConnectTimeout bounds the wait for the connect frame when the
	// upgrade had no Authorization header. Zero means 5 s.
	ConnectTimeout time.Duration
	// MaxFrameBytes bounds a client's frame; a larger one closes the
	// session with 1009. Zero means room for a max_payload message in
	// base64 plus 64 KiB of JSON around it.
	MaxFrameBytes int64
	// MaxSubscriptions bounds a session's subscriptions. Zero means 1000.
	MaxSubscriptions int
	// MaxSessionsPerToken bounds the open sessions of one token. Zero
	// means 10000.
	MaxSessionsPerToken int
	// MaxInflight bounds a session's requests and acknowledged publishes
	// awaiting NATS. Zero means 256.
	MaxInflight int
	// ExpiryNotice is how long before its token expires (an OIDC token's)
	// a session is sent {"op":"status","auth":"expiring",…}, time to
	// refresh it with a connect frame. Zero means 30 s.
	ExpiryNotice time.Duration
}

func (c *WSConfig) setDefaults() {
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 5 * time.Second
	}
	if c.MaxSubscriptions <= 0 {
		c.MaxSubscriptions = 1000
	}
	if c.MaxSessionsPerToken <= 0 {
		c.MaxSessionsPerToken = 10000
	}
	if c.MaxInflight <= 0 {
		c.MaxInflight = 256
	}
	if c.ExpiryNotice <= 0 {
		c.ExpiryNotice = 30 * time.Second
	}
}

// noDeadline is the context of a session's reads. Sessions end by closing
// their socket, never by a read context: coder/websocket would register a
// context.AfterFunc on every read, and close the socket without the
// contract's close code when it fired.
var noDeadline = context.Background()

// connectFrameLimit bounds the frame read before authentication: a
// connect frame with a token of maxTokenLen.
const connectFrameLimit = maxTokenLen + 1<<10

// maxIDLen bounds sid and id values, which are echoed in frames.
const maxIDLen = 64

// frame is a client frame; which fields matter depends on op.
type frame struct {
	Op        string `json:"op"`
	Token     string `json:"token"`
	Sid       string `json:"sid"`
	ID        string `json:"id"`
	Queue     string `json:"queue"`
	TimeoutMS *int64 `json:"timeout_ms"`
	// A sub's start position, which makes it a JetStream subscription;
	// raw, so a wrong type is an error frame, not a malformed frame.
	Deliver   json.RawMessage `json:"deliver"`
	StartSeq  json.RawMessage `json:"start_seq"`
	StartTime json.RawMessage `json:"start_time"`
	// A key-value watch's; the non-strings raw, as for a sub.
	Bucket         string          `json:"bucket"`
	Filter         string          `json:"filter"`
	Include        string          `json:"include"`
	IgnoreDeletes  json.RawMessage `json:"ignoreDeletes"`
	ResumeRevision json.RawMessage `json:"resumeRevision"`
	wireMsg
}

// parseFrame decodes a client frame. Malformed JSON, a missing op and
// ids that cannot be echoed safely are protocol errors.
func parseFrame(data []byte) (*frame, error) {
	var f frame
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("frame is not a JSON object: %v", err)
	}
	if f.Op == "" {
		return nil, errors.New(`frame has no "op"`)
	}
	for _, v := range []struct{ name, val string }{{"sid", f.Sid}, {"id", f.ID}} {
		if !validID(v.val) {
			return nil, fmt.Errorf("%s must be at most %d printable ASCII characters without quotes or backslashes", v.name, maxIDLen)
		}
	}
	return &f, nil
}

func validID(s string) bool {
	if len(s) > maxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c > '~' || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// sessionCounter bounds the open sessions (or streams) of each token.
type sessionCounter struct {
	max  int
	what string // "WebSocket sessions", for the error
	mu   sync.Mutex
	n    map[bridge.TokenKey]int
}

func newSessionCounter(max int, what string) *sessionCounter {
	return &sessionCounter{max: max, what: what, n: make(map[bridge.TokenKey]int)}
}

// add counts one more for k, or refuses with errTooMany at the bound.
func (s *sessionCounter) add(k bridge.TokenKey) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n[k] >= s.max {
		return fmt.Errorf("%w: this token already has %d open %s; close one first", errTooMany, s.max, s.what)
	}
	s.n[k]++
	return nil
}

func (s *sessionCounter) done(k bridge.TokenKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n[k]--; s.n[k] <= 0 {
		delete(s.n, k)
	}
}

// handleWS handles "GET /v1/ws": a WebSocket session multiplexing
// subscriptions, publishes and requests over one token's NATS connection.
// With an Authorization header the token is checked before the upgrade
// (and errors are plain HTTP); without one, the first frame must be
// {"op":"connect","token":…} within WSConfig.ConnectTimeout.
// connectSession is connect for a WebSocket session: the token's
// connection, with a place among its sessions (--ws-max-sessions-per-token)
// taken, to be given back with sessions.done.
func (s *Server) connectSession(ctx context.Context, remote, tok string) (*bridge.Conn, error) {
	c, err := s.connect(ctx, remote, tok)
	if err != nil {
		return nil, err
	}
	if err := s.sessions.add(c.Key()); err != nil {
		c.Release()
		return nil, err
	}
	return c, nil
}

func (s *Server) handleWS() http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := s.checkOrigin(r); err != nil {
			writeError(w, r, err)
			return
		}
		var c *bridge.Conn
		if r.Header.Get("Authorization") != "" {
			tok, err := s.bearer(r)
			if err == nil {
				c, err = s.connectSession(r.Context(), r.RemoteAddr, tok)
			}
			if err != nil {
				writeError(w, r, err)
				return
			}
		}
		uw := &upgradeWriter{ResponseWriter: w}
		ws, err := websocket.Accept(uw, r, &websocket.AcceptOptions{
			OriginPatterns:  s.originPatterns(r),
			CompressionMode: websocket.CompressionDisabled,
		})
		if err != nil {
			if c != nil {
				s.sessions.done(c.Key())
				c.Release()
			}
			return
		}
		// The session runs on a goroutine of its own and this handler
		// returns: the request, its buffers and the router's deep stack are
		// not kept for the session's lifetime.
		uw.conn.timeout = s.cfg.WriteTimeout // for coder/websocket's own writes, from the first
		sess := newSession(s, ws, uw.conn, r.RemoteAddr, requestID(r.Context()))
		go sess.run(c)
	}
}

// session is one WebSocket connection. One goroutine reads; a writer
// goroutine runs only while there is something to write; the server's
// pinger sends keep-alive pings. An idle session therefore holds one
// goroutine and no timer.
type session struct {
	s      *Server
	ws     *websocket.Conn
	netc   *corkedConn
	remote string
	reqID  string          // the upgrade request's id, for logs
	ctx    context.Context // made on first use by the reader (context); nil for idle sessions
	cancel context.CancelFunc

	// conn is the token's connection, the reader's; a refresh replaces it
	// (use). live is the one whose close ends the session: the new one as
	// soon as a refresh has it. connUse counts the requests and
	// acknowledged publishes under way on conn (made on first use), which
	// a connection left behind waits for before it is released.
	conn    *bridge.Conn
	live    atomic.Pointer[bridge.Conn]
	connUse *sync.WaitGroup
	unwatch func()      // stops conn's status callbacks
	expiry  *time.Timer // the expiring notice of conn's token, if it expires; reader only
	limit   int64       // the session's frame bound

	out      *outbox
	inflight atomic.Int32
	subs     subTable     // core and JetStream subscriptions by sid; reader goroutine only
	pingAt   atomic.Int64 // unix ns of the next keep-alive ping; 0 while one is under way or before connect
}

func newSession(s *Server, ws *websocket.Conn, netc *corkedConn, remote, reqID string) *session {
	sess := &session{s: s, ws: ws, netc: netc, remote: remote, reqID: reqID}
	sess.out = newOutbox(s.cfg.QueueBytes, s.wsDropped, sess)
	return sess
}

// context is the session's context, ended when the session ends. It is
// made on first use, so an idle session does not hold one; reader
// goroutine only.
func (ss *session) context() context.Context {
	if ss.ctx == nil {
		ss.ctx, ss.cancel = context.WithCancel(context.Background())
	}
	return ss.ctx
}

// wake starts the writer; the outbox calls it when it has something to
// write and no writer is running.
func (ss *session) wake() { go ss.writeLoop() }

// run serves the session until it ends, then releases everything it held.
func (ss *session) run(c *bridge.Conn) {
	s := ss.s
	defer func() {
		if p := recover(); p != nil {
			ss.panicked(p)
			ss.end()
		}
	}()
	if !s.track(ss) {
		ss.closeWS(websocket.StatusGoingAway, "gateway shutting down")
		ss.cleanupConn(c)
		return
	}
	if c == nil {
		var code websocket.StatusCode
		var reason string
		if c, code, reason = ss.awaitConnect(); c == nil {
			if code != 0 {
				ss.closeWS(code, truncateReason(reason))
			}
			ss.ws.CloseNow()
			ss.end()
			return
		}
	}
	ss.live.Store(c)
	ss.use(c)
	s.metrics.sessions.WithLabelValues("ws").Inc()

	ss.limit = s.cfg.WS.MaxFrameBytes
	if ss.limit <= 0 {
		ss.limit = (c.MaxPayload()+2)/3*4 + 64<<10
	}
	ss.ws.SetReadLimit(ss.limit)
	ss.connected("")
	ss.pingAt.Store(time.Now().Add(s.cfg.KeepAlive).UnixNano())
	go ss.serve() // on a fresh stack, as after a sub (see serve)
}

// serve reads and handles frames until the session ends, then ends it.
// After a frame that changes what the session holds (sub, unsub, watch,
// a refresh's connect) reading goes on in a fresh goroutine and this one
// ends: handling a frame (encoding/json above all) grows a goroutine's
// stack to 8 KiB, which an idle session would keep for its lifetime,
// where waiting for the next frame needs 2 (corkedConn.awaitData).
// Frequent frames (pub, req) are handled in place; the GC shrinks the
// stack they grew once the session idles.
func (ss *session) serve() {
	handedOn := false
	defer func() {
		p := recover()
		if p != nil {
			ss.panicked(p)
		}
		if p != nil || !handedOn {
			ss.end()
		}
	}()
	for {
		ss.netc.awaitData()
		typ, data, err := ss.ws.Read(noDeadline)
		if err != nil {
			return
		}
		if typ != websocket.MessageText {
			ss.closeWS(closeMalformed, "text frames only")
			return
		}
		f, err := parseFrame(data)
		if err != nil {
			ss.closeWS(closeMalformed, truncateReason(err.Error()))
			return
		}
		if code, reason := ss.handle(f); code != 0 {
			ss.closeWS(code, truncateReason(reason))
			return
		}
		switch f.Op {
		case "sub", "unsub", "watch", "connect":
			handedOn = true
			go ss.serve()
			return
		}
	}
}

// closeWS closes the session with a close handshake, whose reading of
// the client's close frame (coder/websocket does it on this goroutine
// when the reader is not inside it) must not overlap awaitData's look at
// the read buffer.
func (ss *session) closeWS(code websocket.StatusCode, reason string) {
	ss.netc.rmu.Lock()
	defer ss.netc.rmu.Unlock()
	ss.ws.Close(code, reason)
}

func (ss *session) panicked(p any) {
	ss.s.logger.Error("panic in WebSocket session", "request_id", ss.reqID, "panic_type", typeName(p), "stack", string(debug.Stack()))
	ss.ws.CloseNow()
}

// end releases what the session held, as far as it got.
func (ss *session) end() {
	if ss.unwatch != nil { // connected
		ss.s.metrics.sessions.WithLabelValues("ws").Dec()
		ss.cleanup()
	}
	ss.s.untrack(ss)
}

// awaitConnect reads the connect frame, closing the session with 4408 if
// none arrives in time. coder/websocket closes the connection when a
// Read's context ends, so the deadline is a timer that closes with the
// contract's code, not a read context.
func (ss *session) awaitConnect() (*bridge.Conn, websocket.StatusCode, string) {
	s := ss.s
	timer := time.AfterFunc(s.cfg.WS.ConnectTimeout, func() {
		ss.closeWS(closeNoConnect, "no connect frame within "+s.cfg.WS.ConnectTimeout.String())
	})
	ss.ws.SetReadLimit(connectFrameLimit)
	typ, data, err := ss.ws.Read(noDeadline)
	if !timer.Stop() || err != nil {
		return nil, 0, ""
	}
	if typ != websocket.MessageText {
		return nil, closeMalformed, "text frames only"
	}
	f, err := parseFrame(data)
	switch {
	case err != nil:
		return nil, closeMalformed, err.Error()
	case f.Op != "connect":
		s.metrics.authFailures.WithLabelValues("missing").Inc()
		return nil, closeUnauthorized, `first frame must be {"op":"connect","token":…}`
	}
	tok, err := checkToken(f.Token)
	if err != nil {
		s.metrics.authFailures.WithLabelValues("missing").Inc()
		return nil, closeUnauthorized, "missing or malformed token"
	}
	c, err := s.connectSession(context.Background(), ss.remote, tok)
	if err != nil {
		status, _ := classify(err)
		switch status {
		case http.StatusUnauthorized:
			return nil, closeUnauthorized, "token rejected by the NATS server"
		case http.StatusTooManyRequests:
			if errors.Is(err, errTooManyFailed) {
				return nil, closeAuthLimited, "too many failed authentications"
			}
			return nil, websocket.StatusTryAgainLater, "too many sessions for this token"
		default:
			return nil, websocket.StatusTryAgainLater, "NATS unavailable"
		}
	}
	return c, 0, ""
}

// maxCloseReason is the longest close reason a close frame can carry
// (a control frame's 125 bytes less the 2-byte code); coder/websocket
// refuses a longer one and the client then sees 1006 instead of the code.
const maxCloseReason = 123

// truncateReason cuts a close reason to maxCloseReason bytes at a rune
// boundary, marking the cut with "…", so it stays valid UTF-8. Apply it to
// the finished reason, after any quoting.
func truncateReason(s string) string {
	if len(s) <= maxCloseReason {
		return s
	}
	const mark = "…"
	cut := maxCloseReason - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// handle runs one frame. A non-zero code closes the session, with the
// reason truncated by the caller.
func (ss *session) handle(f *frame) (websocket.StatusCode, string) {
	switch f.Op {
	case "sub":
		ss.sub(f)
	case "unsub":
		ss.unsub(f)
	case "watch":
		ss.watch(f)
	case "pub":
		ss.pub(f)
	case "req":
		ss.req(f)
	case "ping":
		ss.out.pushCtrl([]byte(`{"op":"pong"}`))
	case "connect":
		ss.refresh(f)
	default:
		return closeMalformed, "unknown op " + strconv.Quote(f.Op)
	}
	return 0, ""
}

// reply sends an ok, or an error frame for err, for a frame's id/sid;
// more are an ok's further fields (`,"seq":7`).
func (ss *session) reply(f *frame, err error, more ...byte) {
	var b []byte
	if err == nil {
		b = append(append(b, `{"op":"ok"`...), more...)
	} else {
		status, _ := classify(err)
		b = fmt.Appendf(b, `{"op":"error","status":%d,"message":%s`, status, strconv.Quote(err.Error()))
	}
	if f.ID != "" {
		b = append(append(append(b, `,"id":"`...), f.ID...), '"')
	}
	if f.Sid != "" && (f.Op == "sub" || f.Op == "unsub" || f.Op == "watch") {
		b = append(append(append(b, `,"sid":"`...), f.Sid...), '"')
	}
	ss.out.pushCtrl(append(b, '}'))
}

// sidFree checks a sub or watch frame's sid: given, not in use, and room
// for one more subscription; else it answers the error. Feeds that ended
// by themselves, their clients told, give theirs up first.
func (ss *session) sidFree(f *frame) bool {
	s := ss.s
	if ended(ss.subs.get(f.Sid)) || len(ss.subs) >= s.cfg.WS.MaxSubscriptions {
		for i := len(ss.subs) - 1; i >= 0; i-- { // backwards: a removal moves the last entry into i
			if ended(ss.subs[i].sub) {
				ss.removeSub(i)
			}
		}
	}
	switch {
	case f.Sid == "":
		ss.reply(f, badRequest(`%s needs a "sid"`, f.Op))
		return false
	case ss.subs.get(f.Sid) != nil:
		ss.reply(f, badRequest("sid %q is already subscribed", f.Sid))
		return false
	case len(ss.subs) >= s.cfg.WS.MaxSubscriptions:
		ss.reply(f, fmt.Errorf("%w: at most %d subscriptions per session", errTooMany, s.cfg.WS.MaxSubscriptions))
		return false
	}
	return true
}

func (ss *session) sub(f *frame) {
	s := ss.s
	if !ss.sidFree(f) {
		return
	}
	start, err := frameStart(f)
	if err != nil {
		ss.reply(f, err)
		return
	}
	if start != nil {
		ss.subStream(f, *start)
		return
	}
	sub, err := ss.conn.Subscribe(ss.context(), f.Subject, f.Queue, newWSSink(ss.out, f.Sid), s.cfg.MaxSubjectLen)
	if err == nil {
		ss.addSub(f.Sid, sub)
	}
	ss.reply(f, err)
}

// ended says whether sub is a feed that ended by itself and whose client
// was told so.
func ended(sub interface{ Close() }) bool {
	feed, ok := sub.(*jsFeed)
	return ok && feed.told.Load()
}

func (ss *session) addSub(sid string, sub interface{ Close() }) {
	ss.subs.add(sid, sub)
	ss.s.metrics.subscriptions.Inc()
}

// subTable is a session's subscriptions by sid: a slice searched in
// order, as a session holds few (at most --ws-max-subscriptions). An
// entry costs 32 bytes, where a map costs 300 and more from its first,
// which every idle subscribed session would carry.
type subTable []subEntry

type subEntry struct {
	sid string
	sub interface{ Close() }
}

// get is sid's subscription, or nil.
func (t subTable) get(sid string) interface{ Close() } {
	if i := t.index(sid); i >= 0 {
		return t[i].sub
	}
	return nil
}

// index is sid's place, or -1.
func (t subTable) index(sid string) int {
	for i := range t {
		if t[i].sid == sid {
			return i
		}
	}
	return -1
}

// add appends sid's subscription; sid has none (sidFree).
func (t *subTable) add(sid string, sub interface{ Close() }) {
	*t = append(*t, subEntry{sid, sub})
}

// removeAt forgets the subscription at i and returns it; the last entry
// takes its place.
func (t *subTable) removeAt(i int) interface{ Close() } {
	last := len(*t) - 1
	sub := (*t)[i].sub
	(*t)[i] = (*t)[last]
	(*t)[last] = subEntry{}
	*t = (*t)[:last]
	return sub
}

// subStream starts a JetStream subscription: ok (with the seq it starts
// after, bridge.StreamSubscription.StartsAfter, where there is one), then
// the gap notice if any, then its messages, paced to the session's
// reading. A session that reads nothing for SlowConsumerGrace is closed
// with 1008.
func (ss *session) subStream(f *frame, start bridge.Start) {
	s := ss.s
	feed, err := s.subscribeStream(ss.context(), ss.conn, f.Subject, start)
	if err != nil {
		ss.reply(f, err)
		return
	}
	ss.addSub(f.Sid, feed)
	var seq []byte
	if after, ok := feed.sub.StartsAfter(); ok {
		seq = strconv.AppendUint([]byte(`,"seq":`), after, 10)
	}
	ss.reply(f, nil, seq...)
	ss.runFeed(f.Sid, feed)
}

// runFeed starts feeding a JetStream subscription or key-value watch of
// the session's connection to the client: the gap notice first, if any.
// A feed that ends by itself is told to the client as an error frame for
// its sid, which is free from then on (the client may make it again),
// unless the session is moving away from its connection: the move
// resumes it (see refresh). One that stalls closes the session with 1008.
func (ss *session) runFeed(sid string, feed *jsFeed) {
	s := ss.s
	c := ss.conn
	prefix, stalled := newWSSink(ss.out, sid).prefix, stalledMessage(s.cfg.SlowConsumerGrace)
	if feed.kv != nil {
		prefix, stalled = nil, watchStalledMessage(s)
	}
	if g := feed.sub.Gap(); g != nil && feed.kv == nil {
		b := append(append([]byte(`{"op":"status","sid":"`), sid...), `","gap":`...)
		ss.out.pushCtrl(append(gapJSON(b, g), '}'))
	}
	go s.runFeed(feed, ss.out, prefix, func(err error) {
		if errors.Is(err, errStalled) {
			s.metrics.slowClosed.WithLabelValues("ws").Inc()
			ss.out.close()
			ss.closeWS(websocket.StatusPolicyViolation, stalled)
			return
		}
		if ss.live.Load() != c {
			return
		}
		if c.Closed() {
			return // the feed ended with its connection: the session's close says why
		}
		feed.told.Store(true) // before the client hears of it: its sid is free then
		ss.tellEnded(sid, feed, err)
	})
}

func (ss *session) unsub(f *frame) {
	i := ss.subs.index(f.Sid)
	if i < 0 {
		ss.reply(f, badRequest("no subscription with sid %q", f.Sid))
		return
	}
	ss.removeSub(i)
	ss.reply(f, nil)
}

// removeSub closes and forgets the subscription at i in ss.subs.
func (ss *session) removeSub(i int) {
	ss.subs.removeAt(i).Close()
	ss.s.metrics.subscriptions.Dec()
}

// takeSlot reserves one of the session's in-flight slots, for work on its
// current connection; end gives it back. nil: none is free, and the
// client was told.
func (ss *session) takeSlot(f *frame) (end func()) {
	if int(ss.inflight.Add(1)) > ss.s.cfg.WS.MaxInflight {
		ss.inflight.Add(-1)
		ss.reply(f, fmt.Errorf("%w: at most %d requests and acknowledged publishes in flight", errTooMany, ss.s.cfg.WS.MaxInflight))
		return nil
	}
	if ss.connUse == nil {
		ss.connUse = new(sync.WaitGroup)
	}
	use := ss.connUse
	use.Add(1)
	return func() {
		ss.inflight.Add(-1)
		use.Done()
	}
}

// pub publishes in frame order. With an id, the ok or error comes once
// NATS has confirmed (or refused) it; without one, only a local error
// (bad subject, too large, NATS down) is reported.
func (ss *session) pub(f *frame) {
	s := ss.s
	m, err := f.toMsg()
	if err != nil {
		ss.reply(f, err)
		return
	}
	if f.ID == "" {
		if err := ss.conn.PublishAsync(m, s.cfg.MaxSubjectLen); err != nil {
			ss.reply(f, err)
			return
		}
		s.metrics.msgsIn.WithLabelValues("ws").Inc()
		return
	}
	end := ss.takeSlot(f)
	if end == nil {
		return
	}
	confirm, err := ss.conn.PublishStart(m, s.cfg.MaxSubjectLen)
	if err != nil {
		end()
		ss.reply(f, err)
		return
	}
	ctx := ss.context()
	go func() {
		defer end()
		err := confirm(ctx)
		if err == nil {
			s.metrics.msgsIn.WithLabelValues("ws").Inc()
		}
		ss.reply(f, err)
	}()
}

func (ss *session) req(f *frame) {
	s := ss.s
	if f.ID == "" {
		ss.reply(f, badRequest(`req needs an "id"`))
		return
	}
	timeout := s.cfg.RequestTimeout
	if f.TimeoutMS != nil {
		var err error
		if timeout, err = parseTimeout(strconv.FormatInt(*f.TimeoutMS, 10), s.cfg.RequestTimeout, s.cfg.MaxRequestTimeout); err != nil {
			ss.reply(f, err)
			return
		}
	}
	m, err := f.toMsg()
	if err != nil {
		ss.reply(f, err)
		return
	}
	end := ss.takeSlot(f)
	if end == nil {
		return
	}
	ctx, c := ss.context(), ss.conn
	go func() {
		defer end()
		rep, err := c.Request(ctx, m, timeout, s.cfg.MaxSubjectLen)
		if err != nil {
			ss.reply(f, err)
			return
		}
		s.metrics.msgsIn.WithLabelValues("ws").Inc()
		b := make([]byte, 0, len(`{"op":"reply","id":"",`)+len(f.ID)+len(rep.JSON()))
		b = append(append(append(b, `{"op":"reply","id":"`...), f.ID...), `",`...)
		ss.out.pushCtrl(append(b, rep.JSONFields()...))
	}()
}

// onStatus tells the client about its NATS connection c; c closed for
// good ends the session, unless the session has moved to another
// connection meanwhile (a refresh).
func (ss *session) onStatus(c *bridge.Conn, st bridge.Status) {
	if ss.live.Load() != c {
		return
	}
	if st != bridge.Closed {
		ss.out.tryCtrl([]byte(`{"op":"status","nats":"` + st.String() + `"}`))
		return
	}
	go ss.endFor(c)
}

// endFor closes the session for its connection c, closed for good.
func (ss *session) endFor(c *bridge.Conn) {
	if ss.live.Load() != c {
		return
	}
	if c.ClosedByAuth() {
		reason := "token no longer accepted by the NATS server"
		if c.CloseReason() == bridge.ReasonTokenExpired {
			reason = bridge.ReasonTokenExpired
		}
		ss.closeWS(closeUnauthorized, reason)
	} else {
		ss.closeWS(websocket.StatusTryAgainLater, "NATS connection closed")
	}
}

// pingDue reports whether the session is authenticated and due a ping,
// and claims the ping.
func (ss *session) pingDue(now int64) bool {
	at := ss.pingAt.Load()
	return at != 0 && at <= now && ss.pingAt.CompareAndSwap(at, 0)
}

// ping pings the client and closes a peer that does not answer within
// WriteTimeout; otherwise the next ping is due in KeepAlive.
func (ss *session) ping() {
	ctx, cancel := context.WithTimeout(context.Background(), ss.s.cfg.WriteTimeout)
	err := ss.ws.Ping(ctx)
	cancel()
	if err != nil {
		ss.ws.CloseNow()
		return
	}
	ss.pingAt.Store(time.Now().Add(ss.s.cfg.KeepAlive).UnixNano())
}

// writeLoop writes until the session's outbox is empty, then exits; the
// outbox starts it again when something arrives. It frames the data
// frames itself (corkedConn.text) and sends each batch in one write with
// WriteTimeout: a client that does not take it in time is closed.
func (ss *session) writeLoop() {
	s := ss.s
	var (
		b  batch
		ok bool
	)
	// Let the goroutine that woke us (a subscription's, handing one
	// message to many sessions) run on first: what it queues meanwhile
	// goes out in this first write. With nothing else runnable this
	// returns at once, so a lone message waits for nothing.
	runtime.Gosched()
	for {
		if b, ok = ss.out.take(b); !ok {
			return
		}
		ss.netc.cork()
		err := func() error {
			for _, c := range b.ctrl {
				if err := ss.netc.text(c); err != nil {
					return err
				}
			}
			for _, it := range b.items {
				var err error
				if it.msg == nil {
					err = ss.netc.text(it.raw)
				} else {
					err = ss.netc.text(it.prefix, it.msg.JSONFields())
				}
				if err != nil {
					return err
				}
			}
			s.wsOut.Add(float64(messages(b.items)))
			if b.dropped > 0 {
				return ss.netc.text(fmt.Appendf(nil, `{"op":"error","status":429,"message":"slow consumer: %d dropped"}`, b.dropped))
			}
			return nil
		}()
		if uerr := ss.netc.uncork(); err == nil {
			err = uerr
		}
		if err == nil && b.behind > s.cfg.SlowConsumerGrace {
			s.metrics.slowClosed.WithLabelValues("ws").Inc()
			ss.out.close()
			ss.closeWS(websocket.StatusPolicyViolation, "slow consumer: stayed behind for "+b.behind.Round(time.Millisecond).String())
			return
		}
		if err != nil {
			ss.out.close()
			if !errors.Is(err, errCloseSent) {
				ss.ws.CloseNow()
			}
			return
		}
	}
}

// cleanup ends everything the session holds once its reader returns.
func (ss *session) cleanup() {
	if ss.cancel != nil {
		ss.cancel()
	}
	ss.out.close()
	for len(ss.subs) > 0 {
		ss.removeSub(len(ss.subs) - 1)
	}
	ss.unwatch()
	if ss.expiry != nil {
		ss.expiry.Stop()
	}
	ss.cleanupConn(ss.conn)
	ss.ws.CloseNow()
}

func (ss *session) cleanupConn(c *bridge.Conn) {
	if c != nil {
		ss.s.sessions.done(c.Key())
		c.Release()
	}
}

// wsSink feeds a session's queue from one subscription.
type wsSink struct {
	out    *outbox
	prefix []byte // {"op":"msg","sid":"<sid>", : the frame before the message's fields
}

func newWSSink(out *outbox, sid string) *wsSink {
	return &wsSink{out: out, prefix: []byte(`{"op":"msg","sid":"` + sid + `",`)}
}

func (w *wsSink) Deliver(m *bridge.Msg) { w.out.push(w.prefix, m) }
func (w *wsSink) Dropped(n int)         { w.out.noteDropped(n) }
