package bridge

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// What a key-value watch starts with (KVWatchOptions.Include).
const (
	// KVIncludeLastValue: each matching key's latest entry, then changes.
	KVIncludeLastValue = "lastValue"
	// KVIncludeAllHistory: every entry the bucket keeps, then changes.
	KVIncludeAllHistory = "allHistory"
	// KVIncludeUpdatesOnly: changes from now on only.
	KVIncludeUpdatesOnly = "updatesOnly"
)

// KVWatchOptions say what a key-value watch delivers. Zero values mean
// the defaults stated on each field.
type KVWatchOptions struct {
	// Filter selects the keys, as ValidateKeyFilter takes them ("*" a
	// token, a final ">" the rest). Empty means ">": every key.
	Filter string
	// Include is KVIncludeLastValue, KVIncludeAllHistory or
	// KVIncludeUpdatesOnly. Empty means KVIncludeLastValue.
	Include string
	// IgnoreDeletes leaves out delete and purge entries.
	IgnoreDeletes bool
	// ResumeRevision, when not 0, starts the watch at that revision of
	// the bucket (every matching entry from it on), instead of Include.
	ResumeRevision uint64
}

// kvOperationHeader is the header nats.go writes on delete and purge
// markers.
const kvOperationHeader = "KV-Operation"

// KVWatch is a watch of a key-value bucket: a JetStream subscription
// (an ordered consumer, paced by its owner's calls to Next, recreated
// from the last revision after a reconnect) of the bucket's stream
// KV_<bucket>, filtered to $KV.<bucket>.<filter>. The owner calls Next
// until it fails, then Close; Stop ends it from anywhere.
//
// nats.go's KeyValue.Watch is not used: its push consumer delivers as
// fast as the server sends, which a slow client could not pace.
type KVWatch struct {
	*StreamSubscription
	bucket        string
	prefix        string // "$KV.<bucket>."
	ignoreDeletes bool
	current       bool // the caught-up news has been returned
}

// kvSubjectMax bounds a watch's subject: $KV.<bucket>.<filter>.
const kvSubjectMax = len("$KV.") + MaxBucketLen + 1 + MaxKeyLen

// WatchKV starts a watch of bucket. Bad names are ErrBadKey, a bad
// Include ErrInvalid, a missing bucket ErrNoBucket. The NATS server
// decides, through the token's own connection: the token must be allowed
// to subscribe to $KV.<bucket>.<filter> and to use the JetStream API,
// else ErrForbidden, at once.
func (c *Conn) WatchKV(ctx context.Context, bucket string, o KVWatchOptions) (*KVWatch, error) {
	if err := ValidateBucket(bucket); err != nil {
		return nil, err
	}
	if o.Filter == "" {
		o.Filter = ">"
	}
	if err := ValidateKeyFilter(o.Filter); err != nil {
		return nil, err
	}
	var start Start
	switch {
	case o.ResumeRevision != 0:
		start.Seq = o.ResumeRevision
	case o.Include == "", o.Include == KVIncludeLastValue:
		start.Deliver = DeliverLastPerSubject
	case o.Include == KVIncludeAllHistory:
		start.Deliver = DeliverAll
	case o.Include == KVIncludeUpdatesOnly:
		start.Deliver = DeliverNew
	default:
		return nil, fmt.Errorf("%w: include %q is not one of %s, %s, %s", ErrInvalid, o.Include,
			KVIncludeLastValue, KVIncludeAllHistory, KVIncludeUpdatesOnly)
	}
	prefix := "$KV." + bucket + "."
	subject := prefix + o.Filter
	if err := c.maySubscribe(ctx, subject, kvSubjectMax); err != nil {
		return nil, err
	}
	sub, err := c.kvSubscribe(ctx, bucket, subject, start)
	if err != nil {
		return nil, err
	}
	return &KVWatch{StreamSubscription: sub, bucket: bucket, prefix: prefix, ignoreDeletes: o.IgnoreDeletes}, nil
}

// kvSubscribe starts a JetStream subscription of subject on bucket's
// stream, which must be a key-value bucket's (else ErrNoBucket); tune
// as for subscribeOn.
func (c *Conn) kvSubscribe(ctx context.Context, bucket, subject string, start Start, tune ...func(*jetstream.OrderedConsumerConfig)) (*StreamSubscription, error) {
	var info *jetstream.StreamInfo
	err := c.kvJSCall(ctx, bucket, func(ctx context.Context, js jetstream.JetStream) error {
		s, err := js.Stream(ctx, "KV_"+bucket)
		if err != nil {
			return err
		}
		if info = s.CachedInfo(); info.Config.MaxMsgsPerSubject < 1 { // nats.go's check of a KV stream
			return jetstream.ErrBadBucket
		}
		return nil
	})
	var sub *StreamSubscription
	if err == nil {
		sub, err = c.subscribeOn(ctx, info, subject, start, kvSubjectMax, tune...)
	}
	if errors.Is(err, ErrNoStream) { // the stream went between the lookup and the consumer
		err = fmt.Errorf("%w: %v", ErrNoBucket, err)
	}
	return sub, err
}

// Next waits for the watch's next entry. Once, when every entry that was
// current as the watch started has been returned (at once for a bucket
// with none, and for KVIncludeUpdatesOnly), it returns caughtUp true and
// no entry instead. Its errors are StreamSubscription.Next's, a deleted
// bucket ErrNoBucket. Only the watch's owner calls it.
func (w *KVWatch) Next() (e *KVEntry, caughtUp bool, err error) {
	for {
		if !w.current && w.Pending() == 0 {
			w.current = true
			return nil, true, nil
		}
		m, err := w.StreamSubscription.Next()
		if errors.Is(err, ErrNoStream) {
			return nil, false, fmt.Errorf("%w: bucket %s was deleted", ErrNoBucket, w.bucket)
		}
		if err != nil {
			return nil, false, err
		}
		e := w.entry(m)
		if w.ignoreDeletes && e.Operation != KVPut {
			continue
		}
		return e, false, nil
	}
}

// entry reads a message of the bucket's stream as an entry; Delta is
// what the watch has yet to deliver, as nats.go reports it.
func (w *KVWatch) entry(m *Msg) *KVEntry {
	e := &KVEntry{Bucket: w.bucket, Key: m.Subject[min(len(w.prefix), len(m.Subject)):], Operation: KVPut,
		Revision: m.Stored.Seq, Created: m.Stored.Time, Delta: w.Pending()}
	switch op := firstHeader(m.Header, kvOperationHeader); op {
	case KVDel, KVPurge:
		e.Operation = op
	default:
		e.Value = m.Data
	}
	return e
}

func firstHeader(h map[string][]string, name string) string {
	if v := h[name]; len(v) > 0 {
		return v[0]
	}
	return ""
}
