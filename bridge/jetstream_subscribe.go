package bridge

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrSeveralStreams means a JetStream subscription's subject spans more
// than one stream (">" over streams holding "a.>" and "b.>"); one
// subscription reads one stream.
var ErrSeveralStreams = errors.New("the subject spans several streams")

// ErrClosed means a subscription ended because it was stopped.
var ErrClosed = errors.New("subscription closed")

// Deliver policies of a JetStream subscription (Start.Deliver).
const (
	DeliverAll            = "all"
	DeliverLast           = "last"
	DeliverNew            = "new"
	DeliverLastPerSubject = "last_per_subject"
)

// Start is where a JetStream subscription starts: exactly one of Deliver,
// Seq (a stream sequence, at least 1) or Time.
type Start struct {
	Deliver string
	Seq     uint64
	Time    time.Time
}

func (s Start) validate() error {
	n := 0
	if s.Deliver != "" {
		n++
		switch s.Deliver {
		case DeliverAll, DeliverLast, DeliverNew, DeliverLastPerSubject:
		default:
			return fmt.Errorf("%w: unknown deliver policy %q", ErrInvalid, s.Deliver)
		}
	}
	if s.Seq != 0 {
		n++
	}
	if !s.Time.IsZero() {
		n++
	}
	if n != 1 {
		return fmt.Errorf("%w: give exactly one start position", ErrInvalid)
	}
	return nil
}

// Gap says a subscription's requested start is older than the stream's
// first message: the messages in between expired or were purged.
type Gap struct {
	FirstSeq      uint64    // the stream's first sequence, where delivery starts
	RequestedSeq  uint64    // the start sequence asked for, for a Seq start
	RequestedTime time.Time // the start time asked for, for a Time start
}

// StreamSubscription is a JetStream subscription: an ordered consumer on
// the stream holding the subject, created through the token's connection.
// Its owner calls Next until it fails, then Close; Stop may be called
// from anywhere to end it. Messages come only as fast as Next is called:
// the consumer is pulled in bounded batches (PullBatch), so a subscriber
// that stops calling Next stops the flow instead of piling messages up.
//
// A reconnect of the token's connection makes the ordered consumer
// recreate itself from one past the last message Next returned, so
// nothing is lost or repeated; so does a consumer deleted or lost
// server-side. One that cannot be recreated (its stream deleted) ends
// the subscription: Next fails.
//
// Every subscription holds a consumer of its own. Subscribers of the same
// token and subject that have caught up could share one, as core
// subscriptions are shared; that is not done yet.
type StreamSubscription struct {
	c       *Conn
	stream  string
	subject string
	start   Start // as the consumer was made (DeliverNew as the Seq it meant), for ResumeOn
	gap     *Gap
	after   uint64 // the stream sequence the consumer started after (StartsAfter)
	cons    jetstream.Consumer
	it      jetstream.MessagesContext
	// pending is what the consumer held for the subscription beyond the
	// last message Next returned (or, before the first, at its creation);
	// the owner's only.
	pending uint64

	stopped   chan struct{} // closed by Stop
	closed    chan struct{} // closed once Close has removed the consumer
	stopOnce  sync.Once
	closeOnce sync.Once
}

// PullBatch bounds what a JetStream subscription pulls ahead of its
// subscriber: at most PullBatch messages, and each pull request at most
// max(PullBytes, the server's max_payload plus room for subject and
// headers) bytes (a message larger than a pull's byte limit could never
// be delivered).
const (
	PullBatch = 64
	PullBytes = 256 << 10
)

// consumerInactive is the inactive threshold of the gateway's consumers:
// one whose subscription the gateway could not delete (NATS unreachable
// then, or the gateway gone) is removed by the server after it.
const consumerInactive = time.Minute

// consumerResets bounds the attempts of an ordered consumer to recreate
// itself once its consumer is gone (deleted, with its stream or alone;
// lost with a NATS server that restarted, which missed heartbeats show):
// nats.go waits 1 s, then 2 s, between them. Unbounded, as nats.go has
// it by default, a subscription whose stream was deleted would retry
// forever and deliver nothing, silently; bounded, its Next fails, with
// ErrNoStream for a deleted stream.
const consumerResets = 3

// SubscribeStream starts a JetStream subscription on subject (wildcards
// allowed) from start. The NATS server decides, through the token's own
// connection: a subject the token may not subscribe to, or a JetStream
// API it may not use, is ErrForbidden. No stream holding the subject is
// ErrNoStream; several are ErrSeveralStreams.
func (c *Conn) SubscribeStream(ctx context.Context, subject string, start Start, maxSubject int) (*StreamSubscription, error) {
	if err := ValidateSubscribeSubject(subject, maxSubject); err != nil {
		return nil, err
	}
	if err := start.validate(); err != nil {
		return nil, err
	}
	if err := c.maySubscribe(ctx, subject, maxSubject); err != nil {
		return nil, err
	}
	var (
		info  *jetstream.StreamInfo
		names []string
	)
	err := c.jsCall(ctx, func(ctx context.Context, js jetstream.JetStream) error {
		l := js.ListStreams(ctx, jetstream.WithStreamListSubject(subject))
		for si := range l.Info() {
			info = si
			names = append(names, si.Config.Name)
		}
		return l.Err()
	})
	switch {
	case err != nil:
		return nil, err
	case len(names) == 0:
		return nil, fmt.Errorf("%w: no stream holds %q", ErrNoStream, subject)
	case len(names) > 1:
		slices.Sort(names)
		return nil, fmt.Errorf("%w: %q is held by streams %s; subscribe to a subject within one of them", ErrSeveralStreams, subject, strings.Join(names, ", "))
	}
	return c.subscribeOn(ctx, info, subject, start, maxSubject)
}

// maySubscribe asks the server whether this token may subscribe to
// subject. A consumer delivers to an inbox, which the server does not
// check against the subject's permissions, so a JetStream subscription
// asks first (a subscription of the subject already open answers at
// once).
func (c *Conn) maySubscribe(ctx context.Context, subject string, maxSubject int) error {
	probe, err := c.Subscribe(ctx, subject, "", discard{}, maxSubject)
	if err != nil {
		return err
	}
	probe.Close()
	return nil
}

// subscribeOn starts a JetStream subscription of subject on the stream
// info describes, the caller having checked the subject and the token's
// right to it. tune, if given, amends the consumer's configuration.
func (c *Conn) subscribeOn(ctx context.Context, info *jetstream.StreamInfo, subject string, start Start, maxSubject int, tune ...func(*jetstream.OrderedConsumerConfig)) (*StreamSubscription, error) {
	s := &StreamSubscription{c: c, stream: info.Config.Name, subject: subject, start: start, stopped: make(chan struct{}), closed: make(chan struct{})}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}, InactiveThreshold: consumerInactive, MaxResetAttempts: consumerResets}
	for _, f := range tune {
		f(&cfg)
	}
	switch {
	case start.Seq != 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, start.Seq
	case !start.Time.IsZero():
		t := start.Time
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
	case start.Deliver == DeliverAll:
		cfg.DeliverPolicy = jetstream.DeliverAllPolicy
	case start.Deliver == DeliverLast:
		cfg.DeliverPolicy = jetstream.DeliverLastPolicy
	case start.Deliver == DeliverLastPerSubject:
		cfg.DeliverPolicy = jetstream.DeliverLastPerSubjectPolicy
	case start.Deliver == DeliverNew:
		// As a start sequence rather than the "new" policy: the ordered
		// consumer reapplies its policy when it recreates itself before
		// delivering anything, and "new" then would skip what was stored
		// meanwhile.
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, info.State.LastSeq+1
		s.start = Start{Seq: cfg.OptStartSeq}
	}
	err := c.jsCall(ctx, func(ctx context.Context, js jetstream.JetStream) error {
		var err error
		s.cons, err = js.OrderedConsumer(ctx, s.stream, cfg)
		return err
	})
	if err != nil {
		return nil, err
	}
	ci := s.cons.CachedInfo()
	s.gap = findGap(start, info.State, ci)
	if ci != nil {
		s.pending, s.after = ci.NumPending, ci.Delivered.Stream
	}
	pullBytes := max(PullBytes, int(c.nc.MaxPayload())+maxSubject+16<<10)
	s.it, err = s.cons.Messages(jetstream.PullMaxMessagesWithBytesLimit(PullBatch, pullBytes))
	if err != nil {
		s.deleteConsumer()
		return nil, mapJSError(err)
	}
	c.refs.Add(1) // the connection stays until Close has removed the consumer
	c.jsmu.Lock()
	c.streamSubs[s] = struct{}{}
	c.jsmu.Unlock()
	return s, nil
}

// findGap compares the requested start with what the stream holds.
func findGap(start Start, st jetstream.StreamState, ci *jetstream.ConsumerInfo) *Gap {
	switch {
	case start.Seq != 0:
		// The server moves a start older than the stream's first message
		// up to it when it creates the consumer, which its answer shows.
		first := st.FirstSeq
		if ci != nil {
			first = max(first, ci.Delivered.Stream+1)
		}
		if start.Seq < first {
			return &Gap{FirstSeq: first, RequestedSeq: start.Seq}
		}
	case !start.Time.IsZero():
		// Messages were removed from the head (the first sequence is past
		// 1) and the requested time is before what remains; with nothing
		// left, before the last message stored.
		lost := st.FirstSeq > 1 && (st.Msgs > 0 && start.Time.Before(st.FirstTime) ||
			st.Msgs == 0 && !start.Time.After(st.LastTime))
		if lost {
			return &Gap{FirstSeq: st.FirstSeq, RequestedTime: start.Time}
		}
	}
	return nil
}

// Stream is the name of the stream the subscription reads.
func (s *StreamSubscription) Stream() string { return s.stream }

// Gap reports messages missing before the subscription's first one, or nil.
func (s *StreamSubscription) Gap() *Gap { return s.gap }

// StartsAfter is the stream sequence the subscription starts after, as
// the server placed its consumer: until Next has returned a message,
// Start{Seq: after + 1} makes the same subscription again, so a client
// that comes back before its first message misses none stored meanwhile
// (which DeliverNew, asked again, would skip). ok is false for
// DeliverLastPerSubject, which no one sequence describes.
func (s *StreamSubscription) StartsAfter() (after uint64, ok bool) {
	return s.after, s.start.Deliver != DeliverLastPerSubject
}

// Next waits for the subscription's next message. After Stop it fails
// with ErrClosed; when the token's connection closed, with ErrUnavailable;
// when the stream was deleted, with ErrNoStream; when its consumer could
// not be recreated (consumerResets), with what the server answered.
// Only the subscription's owner calls it.
func (s *StreamSubscription) Next() (*Msg, error) {
	for {
		if s.isStopped() {
			return nil, ErrClosed
		}
		jm, err := s.it.Next()
		if err == nil && s.isStopped() {
			return nil, ErrClosed
		}
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				if s.c.nc.IsClosed() {
					return nil, fmt.Errorf("%w: the NATS connection closed", ErrUnavailable)
				}
				return nil, ErrClosed
			}
			err = mapJSError(err)
			if errors.Is(err, ErrNoStream) {
				err = fmt.Errorf("%w: stream %s was deleted", ErrNoStream, s.stream)
			}
			return nil, err
		}
		md, err := jm.Metadata()
		if err != nil {
			continue // not a stream message: nothing a subscriber can use
		}
		sm := &storedMsg{
			Msg:    Msg{Subject: jm.Subject(), Header: jm.Headers(), Data: jm.Data()},
			stored: Stored{Stream: md.Stream, Seq: md.Sequence.Stream, Time: md.Timestamp},
		}
		m := &sm.Msg
		m.Stored = &sm.stored
		if len(m.Header) == 0 {
			m.Header = nil
		}
		m.wire = m.size() + len(m.Subject)
		s.pending = md.NumPending
		return m, nil
	}
}

// Pending is the number of messages the subscription's consumer held
// beyond the last one Next returned, as the server counted when it sent
// that message (before the first, when the consumer was made): 0 means
// the subscription had caught up with the stream then. Owner only.
func (s *StreamSubscription) Pending() uint64 { return s.pending }

// Stop ends the subscription: Next returns ErrClosed. It may be called
// from any goroutine, any number of times, and does not wait.
func (s *StreamSubscription) Stop() {
	// nats.go holds the consumer's lock while it recreates the consumer
	// after a reconnect, with retries: stopping must not wait for that.
	s.stopOnce.Do(func() {
		close(s.stopped)
		go s.it.Stop()
	})
}

// Stopped is closed when Stop is called: by the owner, or by the pool
// closing. An owner waiting for anything else should wait for it too.
func (s *StreamSubscription) Stopped() <-chan struct{} { return s.stopped }

func (s *StreamSubscription) isStopped() bool {
	select {
	case <-s.stopped:
		return true
	default:
		return false
	}
}

// Close stops the subscription and removes its consumer from the stream.
// The owner calls it once Next has failed; it returns when the server
// has answered the removal (or could not be reached).
func (s *StreamSubscription) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.Stop()
		s.it.Stop() // now, so no message is pulled for the consumer about to go
		err = s.deleteConsumer()
		c := s.c
		c.jsmu.Lock()
		delete(c.streamSubs, s)
		c.jsmu.Unlock()
		close(s.closed)
		c.pool.release(c)
	})
	return err
}

// endStreams stops the connection's JetStream subscriptions and waits
// until their owners have removed the consumers, or ctx ends, or
// ConfirmTimeout passes: before a connection is drained, so that a
// gateway shutting down leaves no consumers behind.
func (c *Conn) endStreams(ctx context.Context) {
	c.jsmu.Lock()
	subs := make([]*StreamSubscription, 0, len(c.streamSubs))
	for s := range c.streamSubs {
		subs = append(subs, s)
	}
	c.jsmu.Unlock()
	if len(subs) == 0 {
		return
	}
	for _, s := range subs {
		s.Stop()
	}
	timer := time.NewTimer(c.pool.cfg.ConfirmTimeout)
	defer timer.Stop()
	for _, s := range subs {
		select {
		case <-s.closed:
		case <-ctx.Done():
			return
		case <-timer.C:
			return
		}
	}
}

func (s *StreamSubscription) deleteConsumer() error {
	ci := s.cons.CachedInfo()
	if ci == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.c.pool.cfg.ConfirmTimeout)
	defer cancel()
	err := s.c.jsCall(ctx, func(ctx context.Context, js jetstream.JetStream) error {
		return js.DeleteConsumer(ctx, s.stream, ci.Name)
	})
	if err != nil && !errors.Is(err, ErrNoStream) {
		return err
	}
	return nil
}

// storedMsg allocates a stored message and its Stored at once.
type storedMsg struct {
	Msg
	stored Stored
}

// discard is a sink for a subscription that only checks permission.
type discard struct{}

func (discard) Deliver(*Msg) {}
func (discard) Dropped(int)  {}
