package bridge

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Moving subscriptions to another connection: a session whose token is
// refreshed (an OIDC token about to expire, replaced by a fresh one) keeps
// its subscriptions on the fresh token's connection. The NATS server
// decides there, through the new token's permissions, as for any
// subscription.

// MoveTo subscribes s's sink to s's subject, in s's queue group, on c, once
// the server has accepted it. s goes on delivering until its owner closes
// it, which it does once the new subscription is in place and s's
// connection has settled (Settle): a message published meanwhile may come
// through both, none through neither.
func (s *Subscription) MoveTo(ctx context.Context, c *Conn, maxSubject int) (*Subscription, error) {
	return c.Subscribe(ctx, s.ss.subject, s.ss.queue, s.sink, maxSubject)
}

// Settle waits until every message c has received so far for its
// subscriptions (all the server sent before a round trip made now) has
// been handed to their sinks, or ctx ends. A session moving its core
// subscriptions away from c calls it once they are in place elsewhere
// and before it closes them here: nothing c received for them is lost.
// A connection that is not connected has nothing more to hand over.
func (c *Conn) Settle(ctx context.Context) error {
	if err := c.flush(); err != nil {
		return err
	}
	done := make(chan struct{})
	if err := c.nc.Barrier(func() { close(done) }); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
	}
}

// ResumeOn starts on c a JetStream subscription continuing s: from one
// past seq last (the last message s's owner passed on), or, with last 0,
// from where s started. Its owner calls it once Next has failed (after
// Stop): the two never deliver together, and nothing is lost or repeated
// between them. s itself is still its owner's to Close. Errors are
// SubscribeStream's; a stream deleted meanwhile is ErrNoStream.
func (s *StreamSubscription) ResumeOn(ctx context.Context, c *Conn, last uint64, maxSubject int) (*StreamSubscription, error) {
	start := s.start
	if last != 0 {
		start = Start{Seq: last + 1}
	}
	if err := c.maySubscribe(ctx, s.subject, maxSubject); err != nil {
		return nil, err
	}
	var info *jetstream.StreamInfo
	err := c.jsCall(ctx, func(ctx context.Context, js jetstream.JetStream) error {
		st, err := js.Stream(ctx, s.stream)
		if err == nil {
			info = st.CachedInfo()
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return c.subscribeOn(ctx, info, s.subject, start, maxSubject)
}

// ResumeOn starts on c a watch continuing w from one past revision last
// (with last 0, from where w started), with w's filter and options.
// caughtUp says whether w's owner passed on the caught-up news; if not,
// the new watch gives it once it has caught up. A bucket deleted
// meanwhile is ErrNoBucket.
func (w *KVWatch) ResumeOn(ctx context.Context, c *Conn, last uint64, caughtUp bool) (*KVWatch, error) {
	sub, err := w.StreamSubscription.ResumeOn(ctx, c, last, kvSubjectMax)
	if errors.Is(err, ErrNoStream) {
		err = fmt.Errorf("%w: %v", ErrNoBucket, err)
	}
	if err != nil {
		return nil, err
	}
	return &KVWatch{StreamSubscription: sub, bucket: w.bucket, prefix: w.prefix, ignoreDeletes: w.ignoreDeletes, current: caughtUp}, nil
}
