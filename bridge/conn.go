package bridge

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Status is a change in a connection's state, reported to watchers.
type Status int

const (
	// Disconnected: NATS went away; the connection is reconnecting.
	Disconnected Status = iota + 1
	// Reconnected: NATS is back and every subscription is live again.
	Reconnected
	// Closed: the connection is gone for good (token revoked, idle,
	// shutdown); users must acquire a new one.
	Closed
)

func (s Status) String() string {
	switch s {
	case Disconnected:
		return "disconnected"
	case Reconnected:
		return "reconnected"
	case Closed:
		return "closed"
	}
	return "status(" + strconv.Itoa(int(s)) + ")"
}

// Conn is one token's NATS connection, shared by everyone presenting that
// token. Get one with Pool.Acquire and give it back with Release.
type Conn struct {
	pool *Pool
	key  TokenKey
	name string
	nc   *nats.Conn

	revoked atomic.Bool   // set by Pool.Forget
	dialed  chan struct{} // closed once the first connect attempt ended
	dialErr error
	done    chan struct{} // closed when the connection closed for good

	// refs counts users; idleSince (unix ns) is when it last dropped to
	// zero. Incremented under pool.mu (read-locked), decremented without
	// it; the pool decides a connection is idle under pool.mu locked.
	refs      atomic.Int64
	idleSince atomic.Int64
	ready     atomic.Bool // dialed successfully; nc is set
	removed   bool        // guarded by pool.mu

	// Publishes and subscriptions awaiting confirmation join the next
	// flush round trip (next); at most maxRounds are in flight.
	cmu        sync.Mutex
	next       *round
	inFlight   int
	roundTrips atomic.Int64 // confirmation round trips made

	perms    permissionLog
	muxOnce  sync.Once // perms learns the reply subject on the first request
	logLimit logLimiter

	jsOnce  sync.Once
	jsh     jetstream.JetStream // see js
	jsAvail jsProbe             // see jetStreamAvailable
	acks    ackRouter           // stored publishes awaiting their stream's acknowledgement

	kvmu sync.Mutex
	kvs  map[string]jetstream.KeyValue // bucket handles, see kvCall

	jsmu       sync.Mutex
	streamSubs map[*StreamSubscription]struct{} // open JetStream subscriptions, for Pool.Close

	smu    sync.Mutex
	subs   map[string]*sharedSub             // plain (no queue) subscriptions by subject
	byNATS map[*nats.Subscription]*sharedSub // every subscription, for slow-consumer reports

	lmu       sync.Mutex
	listeners map[*func(Status)]struct{}
	closed    bool
}

func newConn(p *Pool, key TokenKey) *Conn {
	c := &Conn{
		pool:       p,
		key:        key,
		name:       key.String(),
		dialed:     make(chan struct{}),
		done:       make(chan struct{}),
		subs:       make(map[string]*sharedSub),
		streamSubs: make(map[*StreamSubscription]struct{}),
		byNATS:     make(map[*nats.Subscription]*sharedSub),
		listeners:  make(map[*func(Status)]struct{}),
	}
	c.perms.init()
	c.logLimit.init(asyncLogEvery)
	return c
}

// Release gives back a reference taken by Acquire.
func (c *Conn) Release() { c.pool.release(c) }

// Name is the token's name in the tokens file, or a short fingerprint of
// its hash: what logs and metrics may show.
func (c *Conn) Name() string { return c.name }

// MaxPayload is the server's max_payload for this connection.
func (c *Conn) MaxPayload() int64 { return c.nc.MaxPayload() }

// Connected reports whether the connection is up right now.
func (c *Conn) Connected() bool { return c.nc.IsConnected() }

// Closed reports whether the connection is closed for good (or closing:
// nats.go marks it so before it ends its subscriptions).
func (c *Conn) Closed() bool { return c.nc.IsClosed() }

// Done is closed when the connection is closed for good.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Watch calls fn, on a NATS callback goroutine, for every status change
// until stop is called. fn must not block.
func (c *Conn) Watch(fn func(Status)) (stop func()) {
	c.lmu.Lock()
	defer c.lmu.Unlock()
	if c.closed {
		go fn(Closed)
		return func() {}
	}
	c.listeners[&fn] = struct{}{}
	return func() {
		c.lmu.Lock()
		delete(c.listeners, &fn)
		c.lmu.Unlock()
	}
}

func (c *Conn) notify(s Status) {
	c.lmu.Lock()
	defer c.lmu.Unlock()
	if c.closed {
		return
	}
	if s == Closed {
		c.closed = true
		close(c.done)
	}
	for fn := range c.listeners {
		(*fn)(s)
	}
}

// ClosedByAuth reports whether the connection closed because the token
// is no longer accepted: the server refused it on reconnect, or a
// tokens-file reload removed or changed it (Pool.Forget).
func (c *Conn) ClosedByAuth() bool {
	if c.revoked.Load() {
		return true
	}
	err := c.nc.LastError()
	return err != nil && (errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAuthExpired))
}

// check validates a message for publishing on this connection.
func (c *Conn) check(m *Msg, maxSubject int) error {
	if err := checkMsg(m, maxSubject, c.nc.MaxPayload(), ""); err != nil {
		return err
	}
	if !c.nc.IsConnected() {
		return c.notConnected()
	}
	return nil
}

// checkMsg is check without the connection's state, for a server whose
// max_payload is maxPayload; a subject equal to valid, when not empty,
// is known to be valid (a batch's run of messages to one subject checks
// it once).
func checkMsg(m *Msg, maxSubject int, maxPayload int64, valid string) error {
	if valid == "" || m.Subject != valid {
		if err := ValidatePublishSubject(m.Subject, maxSubject); err != nil {
			return err
		}
	}
	if m.Reply != "" {
		if err := ValidatePublishSubject(m.Reply, maxSubject); err != nil {
			return fmt.Errorf("reply: %w", err)
		}
	}
	if err := ValidateHeaders(m.Header); err != nil {
		return err
	}
	if int64(m.size()) > maxPayload {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrPayloadTooLarge, m.size(), maxPayload)
	}
	return nil
}

func mapPublishError(err error) error {
	switch {
	case errors.Is(err, nats.ErrMaxPayload):
		return fmt.Errorf("%w: %v", ErrPayloadTooLarge, err)
	case errors.Is(err, nats.ErrBadSubject):
		return fmt.Errorf("%w: %v", ErrBadSubject, err)
	default:
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
}

// Publish sends a message and returns once the NATS server has it: after
// a flush round trip shared with every other confirmation waiting on this
// connection. A permission violation the server reports within that round
// trip is ErrForbidden. maxSubject bounds subject length (0: default).
func (c *Conn) Publish(ctx context.Context, m *Msg, maxSubject int) error {
	p, err := c.send(m, maxSubject)
	if err != nil {
		return err
	}
	return c.confirmSent(ctx, p)
}

// PublishBatch publishes every message whose errs entry is nil and
// confirms them all with one round trip: errs[i] stays nil when msgs[i]
// reached the server. An entry's error already set is left as it is.
func (c *Conn) PublishBatch(ctx context.Context, msgs []*Msg, errs []error, maxSubject int) {
	// One snapshot before the first publish serves every message, and so
	// do one look at the connection and its payload limit: a connection
	// lost midway fails the publishes after it in nats.go.
	seq, rc := c.perms.seq(), c.reconnects()
	connected, maxPayload := c.nc.IsConnected(), c.nc.MaxPayload()
	anySent, valid := false, ""
	for i, m := range msgs {
		if errs[i] != nil {
			continue
		}
		if errs[i] = checkMsg(m, maxSubject, maxPayload, valid); errs[i] == nil {
			if valid = m.Subject; !connected {
				errs[i] = c.notConnected()
			} else {
				errs[i] = c.publish(m)
			}
		}
		anySent = anySent || errs[i] == nil
	}
	if !anySent {
		return
	}
	after, cerr := c.confirm(ctx)
	for i, m := range msgs {
		if errs[i] == nil {
			errs[i] = c.outcome(after, cerr, sent{subject: m.Subject, reply: m.Reply, seq: seq, rc: rc})
		}
	}
}

// PublishAsync sends a message without waiting for the server; a
// permission violation is not reported to the caller.
func (c *Conn) PublishAsync(m *Msg, maxSubject int) error {
	if err := c.check(m, maxSubject); err != nil {
		return err
	}
	return c.publish(m)
}

// Request sends a request and waits up to timeout for the reply. A
// publish the server forbids is ErrForbidden as soon as the server says
// so, rather than a timeout.
func (c *Conn) Request(ctx context.Context, m *Msg, timeout time.Duration, maxSubject int) (*Msg, error) {
	m.Reply = ""
	if err := c.check(m, maxSubject); err != nil {
		return nil, err
	}
	if err := c.repliesError(); err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rctx, cancelCause := context.WithCancelCause(rctx)
	defer cancelCause(nil)
	stop := c.perms.watch(m.Subject, cancelCause)
	defer stop()
	reply, err := c.nc.RequestMsgWithContext(rctx, m.toNATS())
	if err == nil {
		return fromNATS(reply), nil
	}
	if cause := context.Cause(rctx); errors.Is(cause, ErrForbidden) {
		return nil, cause
	}
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, fmt.Errorf("%w: %q", ErrNoResponders, m.Subject)
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return nil, fmt.Errorf("%w after %s", ErrTimeout, timeout)
	case errors.Is(err, nats.ErrMaxPayload), errors.Is(err, nats.ErrBadSubject):
		return nil, mapPublishError(err)
	}
	return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
}

// round is one flush round trip; err and reconnects are set before done
// is closed.
type round struct {
	done       chan struct{}
	err        error
	reconnects uint64 // the connection's reconnect count when the PONG came
}

// confirm waits until the server has processed everything this
// connection sent before the call: one PING/PONG, shared by all callers
// that arrive while the previous round trip is under way.
func (c *Conn) confirm(ctx context.Context) (reconnects uint64, err error) {
	c.cmu.Lock()
	if c.next == nil {
		c.next = &round{done: make(chan struct{})}
	}
	r := c.next
	c.startRoundsLocked()
	c.cmu.Unlock()
	select {
	case <-r.done:
		return r.reconnects, r.err
	case <-ctx.Done():
		return 0, fmt.Errorf("%w: gave up waiting for NATS to confirm: %v", ErrUnavailable, ctx.Err())
	}
}

// maxRounds bounds the confirmation round trips in flight on one
// connection. One at a time would make a waiter arriving just after a
// PING wait for that whole round trip and then its own; a few pipelined
// PINGs cut that wait while still sharing each round among many waiters.
const maxRounds = 4

// startRoundsLocked sends the pending round's PING if fewer than maxRounds
// are in flight; a finishing round starts the pending one otherwise.
func (c *Conn) startRoundsLocked() {
	if c.next == nil || c.inFlight >= maxRounds {
		return
	}
	r := c.next
	c.next = nil
	c.inFlight++
	go c.runRound(r)
}

func (c *Conn) runRound(r *round) {
	r.err = c.flush()
	r.reconnects = c.reconnects()
	close(r.done)
	c.cmu.Lock()
	c.inFlight--
	c.startRoundsLocked()
	c.cmu.Unlock()
}

// reconnects is how often the connection has reconnected; nats.go counts
// a reconnect before it sends anything to the new server.
func (c *Conn) reconnects() uint64 { return c.nc.Stats().Reconnects }

// errLostInReconnect: nats.go keeps a flush's PING across a reconnect and
// sends it to the new server, whose PONG says nothing about messages the
// old connection lost. A publish whose round trip spans a reconnect is
// therefore not confirmed.
var errLostInReconnect = fmt.Errorf("%w: the NATS connection was lost before the server confirmed the message; it may not have arrived", ErrUnavailable)

func (c *Conn) flush() error {
	c.roundTrips.Add(1)
	if !c.nc.IsConnected() { // a PING now would wait for the reconnect
		return c.notConnected()
	}
	if err := c.nc.FlushTimeout(c.pool.cfg.ConfirmTimeout); err != nil { // a pooled timer: no context per round
		return fmt.Errorf("%w: NATS did not confirm: %v", ErrUnavailable, err)
	}
	// Every -ERR the server sent before its PONG was recorded by the
	// connection's errTap before nats.go parsed the PONG.
	return nil
}

// onAsyncError is the connection's nats.ErrorHandler. Permission
// violations were already recorded by the errTap; what else comes is
// logged, at most once per kind every asyncLogEvery.
func (c *Conn) onAsyncError(_ *nats.Conn, sub *nats.Subscription, err error) {
	switch {
	case errors.Is(err, nats.ErrPermissionViolation):
	case errors.Is(err, nats.ErrSlowConsumer):
		if sub == nil {
			return
		}
		c.smu.Lock()
		ss := c.byNATS[sub]
		c.smu.Unlock()
		if ss != nil {
			ss.reportDropped(sub)
		}
		if ok, suppressed := c.logLimit.allow("slow consumer " + sub.Subject); ok {
			c.pool.cfg.Logger.Warn("nats slow consumer: the gateway fell behind a subscription and NATS messages were dropped",
				append([]any{"token", c.name, "subject", sub.Subject}, suppressedAttr(suppressed)...)...)
		}
	default:
		if ok, suppressed := c.logLimit.allow(err.Error()); ok {
			c.pool.cfg.Logger.Info("nats async error",
				append([]any{"token", c.name, "err", err}, suppressedAttr(suppressed)...)...)
		}
	}
}

// repliesError is what every request checks first: whether the server
// refused the subscription replies arrive on. On the first request it
// tells the permission log that subject, which nats.go subscribes to with
// its first request: asking for it sooner would make nats.go set up its
// reply state (a random source of 5 KiB) for connections that never send
// a request.
func (c *Conn) repliesError() error {
	c.muxOnce.Do(func() { c.perms.setMux(c.muxSubject()) })
	return c.perms.inboxError()
}

// muxSubject is the wildcard subject nats.go subscribes to for replies.
func (c *Conn) muxSubject() string {
	inbox := c.nc.NewRespInbox()
	return inbox[:strings.LastIndexByte(inbox, '.')] + ".*"
}

// Sink receives the messages of a subscription. Deliver is called on the
// subscription's NATS goroutine and must not block.
type Sink interface {
	Deliver(*Msg)
	// Dropped reports n messages lost before the gateway could deliver
	// them: the subscription's NATS buffer overflowed.
	Dropped(n int)
}

// Subscription is one sink's interest in a subject.
type Subscription struct {
	ss   *sharedSub
	sink Sink
	idx  int // its place in ss.sinks, under ss.mu
	once sync.Once
}

// Close ends the subscription; the NATS subscription goes when its last
// sink does. Close is idempotent.
func (s *Subscription) Close() { s.once.Do(func() { s.ss.remove(s) }) }

// sharedSub is one NATS subscription feeding one or more sinks. Sinks
// subscribing to the same subject without a queue group share it, so each
// message is converted and encoded once however many sessions get it;
// same token means same permissions, so sharing never widens access.
// Queue-group subscriptions are never shared.
type sharedSub struct {
	c              *Conn
	subject, queue string
	// mu guards sinks: held shared while a message is handed to them, so
	// joining and leaving cost the same however many sinks there are
	// (a copy per change made subscribing n sessions to one subject
	// cost n²/2 pointer copies).
	mu    sync.RWMutex
	sinks []*Subscription
	sub   *nats.Subscription
	ready chan struct{}
	err   error

	dmu       sync.Mutex
	reported  int         // nats.go drops already reported to the sinks
	dropWatch atomic.Bool // drops were reported; check for more
}

// Subscribe delivers messages on subject (wildcards allowed) to sink, in
// queue group queue if not empty, once the server has accepted the
// subscription; a subscription the server forbids is ErrForbidden.
func (c *Conn) Subscribe(ctx context.Context, subject, queue string, sink Sink, maxSubject int) (*Subscription, error) {
	if err := ValidateSubscribeSubject(subject, maxSubject); err != nil {
		return nil, err
	}
	if queue != "" {
		if err := ValidateQueue(queue, maxSubject); err != nil {
			return nil, err
		}
	}
	if !c.nc.IsConnected() {
		return nil, c.notConnected()
	}
	c.smu.Lock()
	ss := c.subs[subject]
	create := queue != "" || ss == nil
	if create {
		ss = &sharedSub{c: c, subject: subject, queue: queue, ready: make(chan struct{})}
		if queue == "" {
			c.subs[subject] = ss
		}
	}
	sub := &Subscription{ss: ss, sink: sink}
	ss.addLocked(sub)
	c.smu.Unlock()

	if create {
		ss.start()
	}
	select {
	case <-ss.ready:
	case <-ctx.Done():
		sub.Close()
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
	}
	if ss.err != nil {
		sub.Close()
		return nil, ss.err
	}
	return sub, nil
}

// start subscribes and confirms; joiners wait on ready.
func (ss *sharedSub) start() {
	c := ss.c
	seq := c.perms.seq()
	nsub, err := c.nc.QueueSubscribe(ss.subject, ss.queue, ss.onMsg)
	if err != nil {
		err = mapPublishError(err)
	} else {
		// Bound what nats.go buffers for this subscription when its
		// callback falls behind (its default is 64 MiB each).
		_ = nsub.SetPendingLimits(c.pool.cfg.PendingMsgs, c.pool.cfg.PendingBytes)
		c.smu.Lock()
		c.byNATS[nsub] = ss
		c.smu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), c.pool.cfg.ConfirmTimeout)
		_, err = c.confirm(ctx) // a reconnect meanwhile is harmless: nats.go resubscribes
		cancel()
		if err == nil {
			err = c.perms.subscribeDenied(seq, ss.subject, ss.queue)
		}
	}
	c.smu.Lock()
	ss.sub, ss.err = nsub, err
	// Every sink may have left while we waited; then nobody else will
	// unsubscribe.
	drop := err != nil || ss.count() == 0
	if drop && c.subs[ss.subject] == ss {
		delete(c.subs, ss.subject)
	}
	if drop && nsub != nil {
		delete(c.byNATS, nsub)
	}
	c.smu.Unlock()
	if drop && nsub != nil {
		_ = nsub.Unsubscribe()
	}
	close(ss.ready)
}

// reportDropped tells the sinks how many messages nats.go dropped since
// the last report.
func (ss *sharedSub) reportDropped(sub *nats.Subscription) {
	total, err := sub.Dropped()
	if err != nil {
		return
	}
	ss.dmu.Lock()
	n := total - ss.reported
	ss.reported = total
	ss.dmu.Unlock()
	// nats.go reports a slow consumer once per episode, which lasts until
	// it can queue a message again. While messages are queued (more may
	// be dropped meanwhile) or a check still finds new drops, each
	// delivery checks again, so drops are told with the next message at
	// the latest; with nothing queued, the next drop starts a new episode.
	pending, _, _ := sub.Pending()
	ss.dropWatch.Store(n > 0 || pending > 0)
	if n <= 0 {
		return
	}
	ss.mu.RLock()
	defer ss.mu.RUnlock()
	for _, s := range ss.sinks {
		s.sink.Dropped(n)
	}
}

func (ss *sharedSub) onMsg(nm *nats.Msg) {
	if ss.dropWatch.Load() && nm.Sub != nil {
		ss.reportDropped(nm.Sub)
	}
	m := fromNATS(nm)
	ss.mu.RLock()
	defer ss.mu.RUnlock()
	for _, s := range ss.sinks {
		s.sink.Deliver(m)
	}
}

func (ss *sharedSub) count() int {
	ss.mu.RLock()
	defer ss.mu.RUnlock()
	return len(ss.sinks)
}

func (ss *sharedSub) addLocked(s *Subscription) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s.idx = len(ss.sinks)
	ss.sinks = append(ss.sinks, s)
}

// removeSink takes s out of sinks, the last one taking its place, and
// says how many are left. A slice left mostly empty is reallocated, so a
// subject that once had many sinks does not keep their room.
func (ss *sharedSub) removeSink(s *Subscription) int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	last := len(ss.sinks) - 1
	moved := ss.sinks[last]
	ss.sinks[s.idx], moved.idx = moved, s.idx
	ss.sinks[last] = nil
	ss.sinks = ss.sinks[:last]
	if c := cap(ss.sinks); c > 64 && last < c/4 {
		ss.sinks = append(make([]*Subscription, 0, 2*last), ss.sinks...)
	}
	return last
}

func (ss *sharedSub) remove(s *Subscription) {
	c := ss.c
	c.smu.Lock()
	last := ss.removeSink(s) == 0
	if last && c.subs[ss.subject] == ss {
		delete(c.subs, ss.subject)
	}
	sub := ss.sub
	if last && sub != nil {
		delete(c.byNATS, sub)
	}
	c.smu.Unlock()
	if last && sub != nil {
		_ = sub.Unsubscribe()
	}
}

// Key is the token's key (its SHA-256), for per-token bookkeeping.
func (c *Conn) Key() TokenKey { return c.key }

// PublishStart sends a message now, keeping its place in the connection's
// order, and returns the wait for the server's confirmation (as Publish
// gives it).
func (c *Conn) PublishStart(m *Msg, maxSubject int) (confirm func(context.Context) error, err error) {
	p, err := c.send(m, maxSubject)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error { return c.confirmSent(ctx, p) }, nil
}

// sent is what confirming a publish needs to know of its sending.
type sent struct {
	subject, reply string
	seq, rc        uint64 // the permission log's and the reconnect count before sending
}

// send checks and publishes m without waiting.
func (c *Conn) send(m *Msg, maxSubject int) (sent, error) {
	if err := c.check(m, maxSubject); err != nil {
		return sent{}, err
	}
	p := sent{subject: m.Subject, reply: m.Reply, seq: c.perms.seq(), rc: c.reconnects()}
	if err := c.publish(m); err != nil {
		return sent{}, err
	}
	return p, nil
}

// publish hands a checked message to nats.go, sparing a nats.Msg when it
// has no headers.
func (c *Conn) publish(m *Msg) error {
	var err error
	switch {
	case len(m.Header) > 0:
		err = c.nc.PublishMsg(m.toNATS())
	case m.Reply != "":
		err = c.nc.PublishRequest(m.Subject, m.Reply, m.Data)
	default:
		err = c.nc.Publish(m.Subject, m.Data)
	}
	if err != nil {
		return mapPublishError(err)
	}
	return nil
}

// confirmSent waits for the round trip that confirms a sent message.
func (c *Conn) confirmSent(ctx context.Context, p sent) error {
	after, err := c.confirm(ctx)
	return c.outcome(after, err, p)
}

// outcome is what a confirmation round (its reconnect count after, or its
// error) means for a message sent before it.
func (c *Conn) outcome(after uint64, err error, p sent) error {
	switch {
	case err != nil:
		return err
	case after != p.rc:
		return errLostInReconnect
	}
	return c.perms.publishDenied(p.seq, p.subject, p.reply)
}
