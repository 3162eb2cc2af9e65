package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// MsgIDHeader is the NATS header a stream's duplicate detection keys on.
const MsgIDHeader = "Nats-Msg-Id"

// SetMsgID gives m the message id a stream deduplicates by: a repeat
// within the stream's duplicate window is acknowledged as a duplicate and
// not stored again. An empty id changes nothing; a different id already
// in m's headers is ErrBadHeader.
func (m *Msg) SetMsgID(id string) error {
	if id == "" {
		return nil
	}
	if have := m.Header[MsgIDHeader]; len(have) > 0 && (len(have) > 1 || have[0] != id) {
		return fmt.Errorf("%w: two different message ids (a %s header and an idempotency key)", ErrBadHeader, MsgIDHeader)
	}
	if m.Header == nil {
		m.Header = make(map[string][]string, 1)
	}
	m.Header[MsgIDHeader] = []string{id}
	return ValidateHeaders(m.Header)
}

// PubAck is a stream's acknowledgement of a stored message: the stream
// and the sequence number it stored it under, or, for a duplicate, the
// sequence of the message first stored with that id.
type PubAck struct {
	Stream    string `json:"stream"`
	Seq       uint64 `json:"seq"`
	Duplicate bool   `json:"duplicate"`
	Domain    string `json:"domain,omitempty"`
}

// StoredResult is the outcome of one message of PublishStoredBatch:
// Ack when the stream stored it (or knew it as a duplicate), else Err.
type StoredResult struct {
	Ack *PubAck
	Err error
}

// PublishStored publishes m to the stream that holds its subject and
// returns the stream's acknowledgement, once it has stored the message.
// Expectation headers (Nats-Expected-Last-Sequence and the like) the
// stream's state does not meet are ErrConflict; no stream holding the
// subject is ErrNoStream; an account without JetStream is
// ErrJetStreamUnavailable; a subject the token may not publish to is
// ErrForbidden as soon as the server says so. m.Reply must be empty: the
// acknowledgement's inbox is the reply subject.
func (c *Conn) PublishStored(ctx context.Context, m *Msg, maxSubject int) (*PubAck, error) {
	r := c.PublishStoredBatch(ctx, []*Msg{m}, maxSubject)[0]
	return r.Ack, r.Err
}

// PublishStoredBatch publishes msgs in order, as PublishStored does each,
// pipelined: up to the pool's StoredInFlight messages await their
// acknowledgements at once, each sent without waiting for the ones
// before it. A message that fails does not stop the others. Each waits
// at most ConfirmTimeout for its acknowledgement (then ErrTimeout: it may
// have been stored).
func (c *Conn) PublishStoredBatch(ctx context.Context, msgs []*Msg, maxSubject int) []StoredResult {
	res := make([]StoredResult, len(msgs))
	failAll := func(err error) []StoredResult {
		for i := range res {
			if res[i].Ack == nil && res[i].Err == nil {
				res[i].Err = err
			}
		}
		return res
	}
	if err := c.jsUsable(); err != nil {
		return failAll(err)
	}
	r, err := c.ackInbox(ctx)
	if err != nil {
		return failAll(err)
	}
	// A refused publish is reported asynchronously and never
	// acknowledged: any refusal wakes the wait to check those in flight.
	refused := make(chan struct{}, 1)
	stop := c.perms.watch(">", func(error) {
		select {
		case refused <- struct{}{}:
		default:
		}
	})
	defer stop()

	window := c.pool.cfg.StoredInFlight
	pend := make([]pendingAck, len(msgs)) // ch is nil unless awaited
	inFlight, next := 0, 0
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for done := 0; done < len(msgs); {
		for ; next < len(msgs) && inFlight < window; next++ {
			if res[next].Err = c.sendStored(r, msgs[next], maxSubject, &pend[next]); res[next].Err == nil {
				inFlight++
			}
		}
		p := &pend[done]
		if p.ch == nil { // failed before sending, or refused
			done++
			continue
		}
		timer.Reset(time.Until(p.deadline))
		select {
		case m := <-p.ch:
			res[done].Ack, res[done].Err = c.storedOutcome(ctx, m, p.subject)
		case <-refused:
			inFlight -= c.settleRefused(r, pend[done:next], res[done:next])
			continue
		case <-p.lost:
			res[done].Err = errAckLost
		case <-timer.C:
			res[done].Err = fmt.Errorf("%w: the stream did not acknowledge within %s; it may have stored the message (a retry with the same message id stores it at most once)",
				ErrTimeout, c.pool.cfg.ConfirmTimeout)
		case <-ctx.Done():
			for i := done; i < next; i++ {
				if pend[i].ch != nil {
					r.drop(pend[i].token)
				}
			}
			return failAll(fmt.Errorf("%w: gave up waiting for the stream: %w", ErrUnavailable, ctx.Err()))
		}
		r.drop(p.token)
		p.ch = nil
		inFlight--
		done++
	}
	return res
}

// errAckLost: the connection went down while the message awaited its
// acknowledgement, which is then never coming.
var errAckLost = fmt.Errorf("%w: the NATS connection was lost before the stream acknowledged the message; it may have been stored (a retry with the same message id stores it at most once)", ErrUnavailable)

// pendingAck is a sent message awaiting its acknowledgement.
type pendingAck struct {
	token    string // after the inbox prefix
	ch       chan *nats.Msg
	lost     <-chan struct{}
	subject  string
	seq      uint64 // the permission log's before sending
	deadline time.Time
}

// sendStored checks and publishes m with an acknowledgement inbox of its
// own, filling p.
func (c *Conn) sendStored(r *ackRouter, m *Msg, maxSubject int, p *pendingAck) error {
	if m.Reply != "" {
		return fmt.Errorf("%w: a stored publish takes no reply subject (its acknowledgement comes back to the gateway)", ErrBadSubject)
	}
	if err := c.check(m, maxSubject); err != nil {
		return err
	}
	seq := c.perms.seq()
	token, ch, lost := r.add()
	nm := &nats.Msg{Subject: m.Subject, Reply: r.prefix + token, Data: m.Data}
	if len(m.Header) > 0 {
		nm.Header = nats.Header(m.Header)
	}
	if err := c.nc.PublishMsg(nm); err != nil {
		r.drop(token)
		return mapPublishError(err)
	}
	*p = pendingAck{token: token, ch: ch, lost: lost, subject: m.Subject, seq: seq, deadline: time.Now().Add(c.pool.cfg.ConfirmTimeout)}
	return nil
}

// settleRefused fails the messages in flight whose publish the server
// refused, and returns how many.
func (c *Conn) settleRefused(r *ackRouter, pend []pendingAck, res []StoredResult) (n int) {
	for i := range pend {
		p := &pend[i]
		if p.ch == nil {
			continue
		}
		if err := c.perms.publishDenied(p.seq, p.subject, ""); err != nil {
			res[i].Err = err
			r.drop(p.token)
			p.ch = nil
			n++
		}
	}
	return n
}

// storedOutcome reads an acknowledgement: a PubAck, an API error, or the
// server's "no responders" status when nothing stores the subject.
func (c *Conn) storedOutcome(ctx context.Context, m *nats.Msg, subject string) (*PubAck, error) {
	if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		// No responders: no stream holds the subject, or there is no
		// JetStream at all.
		if err := c.jetStreamAvailable(ctx); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w holds subject %q", errNoStreamFor, subject)
	}
	var a struct {
		PubAck
		Error *jetstream.APIError `json:"error"`
	}
	switch err := json.Unmarshal(m.Data, &a); {
	case err != nil:
		return nil, fmt.Errorf("%w: the stream's acknowledgement is not JSON: %v", ErrUnavailable, err)
	case a.Error != nil:
		return nil, mapJSError(a.Error)
	case a.Stream == "":
		return nil, fmt.Errorf("%w: the acknowledgement names no stream", ErrUnavailable)
	}
	return &a.PubAck, nil
}

var errNoStreamFor = fmt.Errorf("%w: no stream", ErrNoStream)

// ackRouter receives stored publishes' acknowledgements on one wildcard
// inbox subscription per connection, made on first use, and hands each to
// the message awaiting it.
type ackRouter struct {
	setup sync.Mutex // held while subscribing

	mu      sync.Mutex
	sub     *nats.Subscription
	prefix  string // "<inbox>.", set before sub
	n       uint64
	waiting map[string]chan *nats.Msg
	lost    chan struct{} // closed (and replaced) when the connection drops
}

// ackInbox returns the connection's acknowledgement router, subscribing
// on first use and confirming that the server accepted the subscription.
func (c *Conn) ackInbox(ctx context.Context) (*ackRouter, error) {
	r := &c.acks
	r.setup.Lock()
	defer r.setup.Unlock()
	r.mu.Lock()
	ready := r.sub != nil
	r.mu.Unlock()
	if ready {
		return r, nil
	}
	prefix := c.nc.NewInbox() + "."
	r.mu.Lock()
	r.prefix, r.waiting, r.lost = prefix, make(map[string]chan *nats.Msg), make(chan struct{})
	r.mu.Unlock()
	seq := c.perms.seq()
	sub, err := c.nc.Subscribe(prefix+"*", r.deliver)
	if err != nil {
		return nil, mapPublishError(err)
	}
	_ = sub.SetPendingLimits(c.pool.cfg.PendingMsgs, c.pool.cfg.PendingBytes)
	cctx, cancel := context.WithTimeout(ctx, c.pool.cfg.ConfirmTimeout)
	_, err = c.confirm(cctx)
	cancel()
	if err == nil {
		err = c.perms.subscribeDenied(seq, prefix+"*", "")
	}
	if err != nil {
		_ = sub.Unsubscribe()
		if errors.Is(err, ErrForbidden) {
			err = fmt.Errorf("%w: this token may not subscribe to %q, where stored publishes' acknowledgements arrive (allow \"_INBOX.>\")", ErrForbidden, prefix+"*")
		}
		return nil, err
	}
	c.Watch(func(s Status) {
		if s != Reconnected {
			r.connectionLost()
		}
	})
	r.mu.Lock()
	r.sub = sub
	r.mu.Unlock()
	return r, nil
}

// add registers a message about to be sent.
func (r *ackRouter) add() (token string, ch chan *nats.Msg, lost <-chan struct{}) {
	ch = make(chan *nats.Msg, 1)
	r.mu.Lock()
	r.n++
	token = strconv.FormatUint(r.n, 36)
	r.waiting[token] = ch
	lost = r.lost
	r.mu.Unlock()
	return token, ch, lost
}

// drop forgets a message no longer awaited.
func (r *ackRouter) drop(token string) {
	r.mu.Lock()
	delete(r.waiting, token)
	r.mu.Unlock()
}

// deliver runs on the subscription's goroutine and never blocks.
func (r *ackRouter) deliver(m *nats.Msg) {
	r.mu.Lock()
	token := strings.TrimPrefix(m.Subject, r.prefix)
	ch := r.waiting[token]
	delete(r.waiting, token)
	r.mu.Unlock()
	if ch != nil {
		ch <- m // buffered for one, and each token is delivered once
	}
}

// connectionLost tells every message awaiting an acknowledgement that it
// will not come: what the old connection carried is gone.
func (r *ackRouter) connectionLost() {
	r.mu.Lock()
	close(r.lost)
	r.lost = make(chan struct{})
	r.mu.Unlock()
}
