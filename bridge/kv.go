package bridge

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Key-value errors, beside the JetStream ones in jetstream.go.
var (
	// ErrNoBucket means no key-value bucket exists by that name.
	ErrNoBucket = errors.New("no such key-value bucket")
	// ErrNoKey means the key has no value: it never had one, or it was
	// deleted or purged (or, for a revision read, that revision is not
	// a value of that key).
	ErrNoKey = errors.New("no such key")
	// ErrBadKey means a bucket name, key or key filter is not one NATS
	// accepts.
	ErrBadKey = errors.New("invalid bucket or key name")
	// ErrPrecondition means a conditional write found the key in another
	// state than the one it was conditioned on: another revision, or a
	// value where it expected none.
	ErrPrecondition = errors.New("precondition failed")
)

// Bounds on names. A key ends up in subjects the connection sends in one
// control line (a direct get names the bucket twice and the key), which
// nats-server caps at max_control_line (4 KiB by default) by closing the
// connection: for every user of the token. The bounds keep well below it.
const (
	// MaxBucketLen bounds bucket names: the stream is "KV_<bucket>" and
	// nats-server takes stream names of at most 255 bytes.
	MaxBucketLen = 252
	// MaxKeyLen bounds keys and key filters.
	MaxKeyLen = 1024
)

// kvHandles bounds the bucket handles a connection keeps.
const kvHandles = 64

// ValidateBucket checks a bucket name as nats.go does ([a-zA-Z0-9_-]+),
// and its length.
func ValidateBucket(bucket string) error {
	switch {
	case bucket == "":
		return fmt.Errorf("%w: empty bucket name", ErrBadKey)
	case len(bucket) > MaxBucketLen:
		return fmt.Errorf("%w: bucket name longer than %d bytes", ErrBadKey, MaxBucketLen)
	}
	for i := 0; i < len(bucket); i++ {
		if c := bucket[i]; !isAlnum(c) && c != '_' && c != '-' {
			return fmt.Errorf("%w: bucket name %q may hold only letters, digits, '_' and '-'", ErrBadKey, bucket)
		}
	}
	return nil
}

// ValidateKey checks a key as nats.go does: [-/_=.a-zA-Z0-9]+, neither
// starting nor ending with '.', no empty token (".."), and its length.
func ValidateKey(key string) error { return validateKey(key, false) }

// ValidateKeyFilter checks a key filter: a key whose tokens may also be
// "*", and whose last may be ">" (as nats.go's search keys).
func ValidateKeyFilter(filter string) error { return validateKey(filter, true) }

func validateKey(key string, filter bool) error {
	what := "key"
	if filter {
		what = "key filter"
	}
	switch {
	case key == "":
		return fmt.Errorf("%w: empty %s", ErrBadKey, what)
	case len(key) > MaxKeyLen:
		return fmt.Errorf("%w: %s longer than %d bytes", ErrBadKey, what, MaxKeyLen)
	case key[0] == '.' || key[len(key)-1] == '.' || strings.Contains(key, ".."):
		return fmt.Errorf("%w: %s %q starts or ends with '.' or has an empty token", ErrBadKey, what, key)
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case isAlnum(c), c == '-', c == '/', c == '_', c == '=', c == '.':
		case filter && c == '*':
		case filter && c == '>' && i == len(key)-1:
		default:
			return fmt.Errorf("%w: %s %q may hold only letters, digits and - / _ = . (filters also * and a final >)", ErrBadKey, what, key)
		}
	}
	return nil
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// KV operations of an entry.
const (
	KVPut   = "PUT"
	KVDel   = "DEL"
	KVPurge = "PURGE"
)

// KVEntry is a key's value at one revision.
type KVEntry struct {
	Bucket    string
	Key       string
	Value     []byte
	Revision  uint64
	Created   time.Time
	Delta     uint64 // how many revisions of the bucket are newer (0 for reads)
	Operation string // KVPut, KVDel or KVPurge
}

func toEntry(e jetstream.KeyValueEntry) *KVEntry {
	op := KVPut
	switch e.Operation() {
	case jetstream.KeyValueDelete:
		op = KVDel
	case jetstream.KeyValuePurge:
		op = KVPurge
	}
	return &KVEntry{Bucket: e.Bucket(), Key: e.Key(), Value: e.Value(), Revision: e.Revision(),
		Created: e.Created(), Delta: e.Delta(), Operation: op}
}

// KVBucketConfig is what a new bucket is made with. Zero values mean
// nats.go's defaults, stated on each field.
type KVBucketConfig struct {
	Description string
	// History is the number of values kept per key, 1 to 64. Zero means 1.
	History int
	// TTL is how long a value lives. Zero means for ever.
	TTL time.Duration
	// MaxBytes bounds the bucket's size. Zero or -1 means no bound.
	MaxBytes int64
	// MaxValueSize bounds each value. Zero or -1 means no bound (but the
	// server's max_payload).
	MaxValueSize int32
	// Memory stores the bucket in memory rather than in files.
	Memory bool
	// Replicas is the number of copies in a cluster. Zero means 1.
	Replicas int
	// Compression compresses the stored values (S2).
	Compression bool
	// Metadata is the application's own.
	Metadata map[string]string
}

// KVBucketInfo describes a bucket: its configuration and state.
type KVBucketInfo struct {
	Bucket       string
	Description  string
	Values       uint64 // values stored, history included
	History      int64
	TTL          time.Duration
	Storage      string // "file" or "memory"
	Bytes        uint64
	Compression  bool
	MaxBytes     int64 // -1: no bound
	MaxValueSize int32 // -1: no bound
	Replicas     int
	Metadata     map[string]string
}

func toBucketInfo(bucket string, si *jetstream.StreamInfo) *KVBucketInfo {
	storage := "file"
	if si.Config.Storage == jetstream.MemoryStorage {
		storage = "memory"
	}
	var md map[string]string
	for k, v := range si.Config.Metadata {
		if strings.HasPrefix(k, "_nats.") { // the server's own
			continue
		}
		if md == nil {
			md = make(map[string]string)
		}
		md[k] = v
	}
	return &KVBucketInfo{
		Bucket: bucket, Description: si.Config.Description,
		Values: si.State.Msgs, History: si.Config.MaxMsgsPerSubject, TTL: si.Config.MaxAge,
		Storage: storage, Bytes: si.State.Bytes, Compression: si.Config.Compression != jetstream.NoCompression,
		MaxBytes: si.Config.MaxBytes, MaxValueSize: si.Config.MaxMsgSize, Replicas: si.Config.Replicas,
		Metadata: md,
	}
}

// kvCall runs fn on the bucket's handle through jsCall. Data operations
// publish to $KV.<bucket>.<key>, outside the JetStream API that jsCall
// watches, so a refused publish there ends the call with ErrForbidden as
// well. Handles are kept per connection (a lookup is a round trip of its
// own); when an operation on a kept handle finds the bucket gone, the
// handle is dropped and the operation tried once more on a fresh lookup,
// which then tells ErrNoBucket.
func (c *Conn) kvCall(ctx context.Context, bucket string, fn func(ctx context.Context, kv jetstream.KeyValue) error) error {
	if err := ValidateBucket(bucket); err != nil {
		return err
	}
	return c.kvJSCall(ctx, bucket, func(ctx context.Context, js jetstream.JetStream) error {
		kv, kept, err := c.kvHandle(ctx, js, bucket)
		if err != nil {
			return err
		}
		err = fn(ctx, kv)
		if kept && bucketGone(err) {
			c.forgetKV(bucket)
			if kv, _, err = c.kvHandle(ctx, js, bucket); err != nil {
				return err
			}
			err = fn(ctx, kv)
		}
		return err
	})
}

// kvJSCall is jsCall watching the bucket's data subjects too, with
// key-value errors translated (jsCall knows only stream errors).
func (c *Conn) kvJSCall(ctx context.Context, bucket string, fn func(ctx context.Context, js jetstream.JetStream) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if bucket != "" {
		stop := c.perms.watch("$KV."+bucket+".>", cancel)
		defer stop()
	}
	var kvErr error
	err := c.jsCall(ctx, func(ctx context.Context, js jetstream.JetStream) error {
		err := fn(ctx, js)
		kvErr = mapKVError(err)
		return err
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrForbidden), kvErr == nil:
		return err
	}
	return kvErr
}

// kvHandle returns the bucket's handle, kept from an earlier call when
// there is one.
func (c *Conn) kvHandle(ctx context.Context, js jetstream.JetStream, bucket string) (kv jetstream.KeyValue, kept bool, err error) {
	c.kvmu.Lock()
	kv = c.kvs[bucket]
	c.kvmu.Unlock()
	if kv != nil {
		return kv, true, nil
	}
	if kv, err = js.KeyValue(ctx, bucket); err != nil {
		return nil, false, err
	}
	c.kvmu.Lock()
	if c.kvs == nil || len(c.kvs) >= kvHandles {
		c.kvs = make(map[string]jetstream.KeyValue)
	}
	c.kvs[bucket] = kv
	c.kvmu.Unlock()
	return kv, false, nil
}

func (c *Conn) forgetKV(bucket string) {
	c.kvmu.Lock()
	delete(c.kvs, bucket)
	c.kvmu.Unlock()
}

// bucketGone reports whether an operation's error means the bucket's
// stream may be gone: nothing answered, or the server says so.
func bucketGone(err error) bool {
	return err != nil && (errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, nats.ErrStreamNotFound) ||
		errors.Is(err, jetstream.ErrBucketNotFound))
}

// mapKVError translates key-value errors; nil for errors that are not
// (jsCall's mapping applies to those).
func mapKVError(err error) error {
	var apiErr *jetstream.APIError
	isAPI := errors.As(err, &apiErr)
	switch {
	case err == nil:
		return nil
	case isAPI && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant):
		// "wrong last sequence: 7": the key's latest revision.
		return fmt.Errorf("%w: the key's latest revision is not the one given (NATS: %s)", ErrPrecondition, apiErr.Description)
	case errors.Is(err, jetstream.ErrBucketNotFound), errors.Is(err, jetstream.ErrStreamNotFound),
		errors.Is(err, nats.ErrStreamNotFound), errors.Is(err, jetstream.ErrNoStreamResponse):
		return fmt.Errorf("%w: %v", ErrNoBucket, err)
	case errors.Is(err, jetstream.ErrBadBucket):
		return fmt.Errorf("%w: the stream of that name is not a key-value bucket", ErrNoBucket)
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		return fmt.Errorf("%w: %v", ErrNoKey, err)
	case errors.Is(err, jetstream.ErrInvalidKey), errors.Is(err, jetstream.ErrInvalidBucketName):
		return fmt.Errorf("%w: %v", ErrBadKey, err)
	case errors.Is(err, jetstream.ErrKeyRevisionMismatch), errors.Is(err, jetstream.ErrKeyExists):
		return fmt.Errorf("%w: the key's latest revision is not the one given", ErrPrecondition)
	case errors.Is(err, jetstream.ErrBucketExists):
		return fmt.Errorf("%w: the bucket exists with another configuration", ErrConflict)
	case errors.Is(err, jetstream.ErrHistoryTooLarge):
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	case isAPI && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum:
		return fmt.Errorf("%w: the value is larger than the bucket's max_value_size (NATS: %s)", ErrPayloadTooLarge, apiErr.Description)
	}
	return nil
}

// KVGet returns the key's current value, or with revision > 0 the value
// it had at that revision. A key without a value (never set, deleted,
// purged, or that revision not one of its values) is ErrNoKey.
func (c *Conn) KVGet(ctx context.Context, bucket, key string, revision uint64) (*KVEntry, error) {
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	var e jetstream.KeyValueEntry
	err := c.kvCall(ctx, bucket, func(ctx context.Context, kv jetstream.KeyValue) (err error) {
		if revision > 0 {
			e, err = kv.GetRevision(ctx, key, revision)
		} else {
			e, err = kv.Get(ctx, key)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return toEntry(e), nil
}

// KVWrite says how KVPut stores a value.
type KVWrite int

const (
	// KVAlways stores the value whatever the key holds.
	KVAlways KVWrite = iota
	// KVIfRevision stores it only if the key's latest revision is the
	// one given (0: the key never had one), else ErrPrecondition.
	KVIfRevision
	// KVIfAbsent stores it only if the key has no value (never had one,
	// or deleted or purged), else ErrPrecondition.
	KVIfAbsent
)

// KVPut stores a value as mode says and returns its revision.
func (c *Conn) KVPut(ctx context.Context, bucket, key string, value []byte, mode KVWrite, revision uint64) (uint64, error) {
	if err := ValidateKey(key); err != nil {
		return 0, err
	}
	var rev uint64
	err := c.kvCall(ctx, bucket, func(ctx context.Context, kv jetstream.KeyValue) (err error) {
		switch mode {
		case KVIfRevision:
			rev, err = kv.Update(ctx, key, value, revision)
		case KVIfAbsent:
			rev, err = kv.Create(ctx, key, value)
		default:
			rev, err = kv.Put(ctx, key, value)
		}
		return err
	})
	if mode == KVIfAbsent && errors.Is(err, ErrPrecondition) {
		return 0, fmt.Errorf("%w: the key has a value", ErrPrecondition)
	}
	return rev, err
}

// KVDelete deletes the key's value, leaving its history, or with purge
// removes its history too. With revision > 0 it does so only if the key's
// latest revision is that one, else ErrPrecondition.
func (c *Conn) KVDelete(ctx context.Context, bucket, key string, purge bool, revision uint64) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	var opts []jetstream.KVDeleteOpt
	if revision > 0 {
		opts = append(opts, jetstream.LastRevision(revision))
	}
	return c.kvCall(ctx, bucket, func(ctx context.Context, kv jetstream.KeyValue) error {
		if purge {
			return kv.Purge(ctx, key, opts...)
		}
		return kv.Delete(ctx, key, opts...)
	})
}

// KVKeys passes each key with a value, matching any of filters (every
// key without filters), to each as the bucket's stream gives them: once
// each, in the order of their last revisions, not sorted. It stops at
// each's first error and returns it; a missing bucket, or one the token
// may not read, fails before the first key. The keys are read through a
// paced JetStream subscription of the bucket's stream (headers only),
// so nothing piles up for a slow each: at most PullBatch messages are
// pulled ahead of it.
func (c *Conn) KVKeys(ctx context.Context, bucket string, filters []string, each func(key string) error) error {
	if err := ValidateBucket(bucket); err != nil {
		return err
	}
	prefix := "$KV." + bucket + "."
	subjects := []string{prefix + ">"}
	if len(filters) > 0 {
		subjects = make([]string, len(filters))
		for i, f := range filters {
			if err := ValidateKeyFilter(f); err != nil {
				return err
			}
			subjects[i] = prefix + f
		}
	}
	sub, err := c.kvSubscribe(ctx, bucket, subjects[0], Start{Deliver: DeliverLastPerSubject}, func(cfg *jetstream.OrderedConsumerConfig) {
		cfg.FilterSubjects, cfg.HeadersOnly = subjects, true
	})
	if err != nil {
		return err
	}
	defer sub.Close()
	defer context.AfterFunc(ctx, sub.Stop)() // Next waits for a message, not for ctx
	for sub.Pending() > 0 {
		m, err := sub.Next()
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("%w: the listing stopped: %v", ErrUnavailable, context.Cause(ctx))
		case err != nil:
			return err
		}
		if op := firstHeader(m.Header, kvOperationHeader); op == KVDel || op == KVPurge {
			continue
		}
		if err := each(m.Subject[len(prefix):]); err != nil {
			return err
		}
	}
	return nil
}

// KVBuckets returns the names of the buckets, sorted.
func (c *Conn) KVBuckets(ctx context.Context) ([]string, error) {
	var names []string
	err := c.kvJSCall(ctx, "", func(ctx context.Context, js jetstream.JetStream) error {
		l := js.KeyValueStoreNames(ctx)
		for n := range l.Name() {
			names = append(names, n)
		}
		return l.Error()
	})
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	return names, nil
}

// KVBucket describes a bucket.
func (c *Conn) KVBucket(ctx context.Context, bucket string) (*KVBucketInfo, error) {
	if err := ValidateBucket(bucket); err != nil {
		return nil, err
	}
	var info *KVBucketInfo
	err := c.kvJSCall(ctx, bucket, func(ctx context.Context, js jetstream.JetStream) error {
		s, err := js.Stream(ctx, "KV_"+bucket)
		if err != nil {
			return err
		}
		si := s.CachedInfo()
		if si.Config.MaxMsgsPerSubject < 1 { // nats.go's check of a KV stream
			return jetstream.ErrBadBucket
		}
		info = toBucketInfo(bucket, si)
		return nil
	})
	return info, err
}

// KVCreateBucket makes a bucket. An existing bucket with the same
// configuration is no error: created is false then. One with another
// configuration is ErrConflict.
func (c *Conn) KVCreateBucket(ctx context.Context, bucket string, cfg KVBucketConfig) (info *KVBucketInfo, created bool, err error) {
	if err := ValidateBucket(bucket); err != nil {
		return nil, false, err
	}
	if cfg.History < 0 || cfg.History > jetstream.KeyValueMaxHistory {
		return nil, false, fmt.Errorf("%w: history must be 1 to %d", ErrInvalid, jetstream.KeyValueMaxHistory)
	}
	kc := jetstream.KeyValueConfig{
		Bucket: bucket, Description: cfg.Description, History: uint8(cfg.History), TTL: cfg.TTL,
		MaxBytes: cfg.MaxBytes, MaxValueSize: cfg.MaxValueSize, Replicas: cfg.Replicas,
		Compression: cfg.Compression, Metadata: cfg.Metadata,
	}
	if cfg.Memory {
		kc.Storage = jetstream.MemoryStorage
	}
	err = c.kvJSCall(ctx, bucket, func(ctx context.Context, js jetstream.JetStream) error {
		_, err := js.KeyValue(ctx, bucket)
		switch {
		case errors.Is(err, jetstream.ErrBucketNotFound):
			created = true
		case err != nil && !errors.Is(err, jetstream.ErrBadBucket):
			return err
		}
		kv, err := js.CreateKeyValue(ctx, kc)
		if err != nil {
			return err
		}
		st, err := kv.Status(ctx)
		if err != nil {
			return err
		}
		bs, ok := st.(*jetstream.KeyValueBucketStatus)
		if !ok {
			return fmt.Errorf("unexpected bucket status %T", st)
		}
		info = toBucketInfo(bucket, bs.StreamInfo())
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	return info, created, nil
}

// KVDeleteBucket deletes a bucket and everything in it.
func (c *Conn) KVDeleteBucket(ctx context.Context, bucket string) error {
	if err := ValidateBucket(bucket); err != nil {
		return err
	}
	defer c.forgetKV(bucket)
	return c.kvJSCall(ctx, bucket, func(ctx context.Context, js jetstream.JetStream) error {
		return js.DeleteKeyValue(ctx, bucket)
	})
}
