package httpapi

import (
	"context"
	"fmt"
	"time"

	"github.com/natsgate/natsgate/bridge"
)

// Token refresh on a WebSocket session: a token that expires (an OIDC
// token's) gets the session an expiring notice ahead of time; a connect
// frame on the open session moves it to the fresh token's connection
// with every subscription kept.

// use makes c the session's connection: its status changes reach the
// client, and the expiring notice of its token, if it expires, is set.
// Reader goroutine only.
func (ss *session) use(c *bridge.Conn) {
	if ss.unwatch != nil {
		ss.unwatch()
	}
	if ss.expiry != nil {
		ss.expiry.Stop()
		ss.expiry = nil
	}
	ss.conn, ss.connUse = c, nil
	ss.unwatch = c.Watch(func(st bridge.Status) { ss.onStatus(c, st) })
	exp, ok := c.Expires()
	if !ok {
		return
	}
	ss.expiry = time.AfterFunc(time.Until(exp)-ss.s.cfg.WS.ExpiryNotice, func() {
		if ss.live.Load() != c {
			return
		}
		left := max(time.Until(exp).Milliseconds(), 0)
		ss.out.pushCtrl(fmt.Appendf(nil, `{"op":"status","auth":"expiring","expires_in_ms":%d}`, left))
	})
}

// connected queues the connected frame, with the connect frame's id if
// it had one.
func (ss *session) connected(id string) {
	s, c := ss.s, ss.conn
	nats := "connected"
	if !c.Connected() {
		nats = "disconnected"
	}
	b := fmt.Appendf(nil, `{"op":"connected","nats":"%s","max_payload":%d,"max_frame_bytes":%d,"max_subscriptions":%d,"queue_bytes":%d`,
		nats, c.MaxPayload(), ss.limit, s.cfg.WS.MaxSubscriptions, s.cfg.QueueBytes)
	if id != "" {
		b = append(append(append(b, `,"id":"`...), id...), '"')
	}
	ss.out.pushCtrl(append(b, '}'))
}

// refresh handles {"op":"connect","token":…} on an open session: it
// acquires the token's connection as a first connect would (the same
// 401 and 429 rules, the token's session bound), moves every
// subscription to it and answers with a new connected frame. Core
// subscriptions are made on the new connection before the old ones end,
// once the old connection has handed over what it received (a message
// published meanwhile may come twice, none is lost); JetStream
// subscriptions and key-value watches stop, then resume there from one
// past the last seq (revision) queued for the client. A refresh that
// fails is an error frame and the session goes on as it was. The reader
// runs it: frames after it (an unsub, a publish) find the session moved.
func (ss *session) refresh(f *frame) {
	s := ss.s
	tok, err := checkToken(f.Token)
	if err != nil {
		s.metrics.authFailures.WithLabelValues("missing").Inc()
		ss.reply(f, err)
		return
	}
	old := ss.conn
	if bridge.KeyOf(tok) == old.Key() {
		ss.connected(f.ID)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.WS.ConnectTimeout)
	defer cancel()
	c, err := s.connectSession(ctx, ss.remote, tok)
	if err != nil {
		ss.reply(f, err)
		return
	}
	// From here the old connection's close no longer ends the session.
	ss.live.Store(c)
	moved, err := ss.moveCore(ctx, c)
	if err != nil {
		ss.live.Store(old)
		ss.cleanupConn(c)
		ss.reply(f, err)
		ss.recheck(old)
		return
	}
	if len(moved) > 0 {
		// What the old connection received before the new subscriptions
		// were in place reaches the client before the old ones end; if it
		// is gone, nothing more comes from it.
		_ = old.Settle(ctx)
	}
	for sid, sub := range moved {
		e := &ss.subs[ss.subs.index(sid)]
		e.sub.Close()
		e.sub = sub
	}
	use := ss.connUse
	ss.use(c)
	ss.moveFeeds(ctx, c)
	s.sessions.done(old.Key())
	if use == nil {
		old.Release()
	} else {
		go func() {
			use.Wait()
			old.Release()
		}()
	}
	ss.connected(f.ID)
}

// moveCore makes every core subscription of the session on c: all or,
// when the server refuses one (the new token may not subscribe to its
// subject), none.
func (ss *session) moveCore(ctx context.Context, c *bridge.Conn) (map[string]*bridge.Subscription, error) {
	moved := make(map[string]*bridge.Subscription)
	for _, e := range ss.subs {
		sid, sub := e.sid, e.sub
		cs, ok := sub.(*bridge.Subscription)
		if !ok {
			continue
		}
		ns, err := cs.MoveTo(ctx, c, ss.s.cfg.MaxSubjectLen)
		if err != nil {
			for _, m := range moved {
				m.Close()
			}
			return nil, fmt.Errorf("refresh refused, the session goes on with the old token: subscription %s: %w", sid, err)
		}
		moved[sid] = ns
	}
	return moved, nil
}

// moveFeeds stops each JetStream subscription and key-value watch of the
// session and resumes it on c. One that cannot be resumed there ends
// with an error frame for its sid, as if its feed had failed: the client
// makes it again.
func (ss *session) moveFeeds(ctx context.Context, c *bridge.Conn) {
	s := ss.s
	for i := range ss.subs { // by index: each resumed feed takes its old one's place
		sid, sub := ss.subs[i].sid, ss.subs[i].sub
		feed, ok := sub.(*jsFeed)
		if !ok {
			continue
		}
		feed.Close()
		select {
		case <-feed.done:
		case <-ctx.Done():
			// Still stopping; the client makes it again.
			feed.told.Store(true)
			ss.tellEnded(sid, feed, fmt.Errorf("%w: the subscription could not be moved to the new token's connection in time", bridge.ErrUnavailable))
			continue
		}
		if feed.told.Load() {
			continue // ended before the move; the client makes it again
		}
		nf, err := s.resumeOn(ctx, c, feed)
		if err != nil {
			feed.told.Store(true)
			ss.tellEnded(sid, feed, err)
			continue
		}
		ss.subs[i].sub = nf
		ss.runFeed(sid, nf)
	}
}

// tellEnded tells the client a feed ended, as runFeed's end does.
func (ss *session) tellEnded(sid string, feed *jsFeed, err error) {
	op := "sub"
	if feed.kv != nil {
		op = "watch"
	}
	ss.reply(&frame{Op: op, Sid: sid}, err)
}

// recheck handles what happened to c while the session was moving away
// from it and came back (a refresh that failed): c closed meanwhile ends
// the session; a feed that ended meanwhile, silently, is told now.
func (ss *session) recheck(c *bridge.Conn) {
	select {
	case <-c.Done():
		go ss.endFor(c)
		return
	default:
	}
	for _, e := range ss.subs {
		sid, sub := e.sid, e.sub
		feed, ok := sub.(*jsFeed)
		if !ok {
			continue
		}
		select {
		case <-feed.done:
			if !feed.told.Load() {
				feed.told.Store(true)
				ss.tellEnded(sid, feed, fmt.Errorf("%w: the subscription ended", bridge.ErrUnavailable))
			}
		default:
		}
	}
}
