package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/natsgate/natsgate/bridge"
)

// Key-value routes, with Synadia's HTTP gateway's paths: entries under
// /v1/kv/{bucket}/{key}, buckets under /v1/kvm/buckets. Every call goes
// through the token's own connection (bridge.Conn.KV*), so the NATS
// server's permissions decide.

// maxBucketConfig bounds a bucket configuration body.
const maxBucketConfig = 64 << 10

// kvParam returns a path segment of a key-value route, unescaped.
func kvParam(r *http.Request, name string) (string, error) {
	v := chi.URLParam(r, name)
	if r.URL.RawPath != "" {
		u, err := url.PathUnescape(v)
		if err != nil {
			return "", fmt.Errorf("%w: bad escape in the path", bridge.ErrBadKey)
		}
		v = u
	}
	return v, nil
}

// kvTarget reads and checks the token, the bucket and (for entry routes)
// the key of a key-value request, before anything reaches NATS.
func (s *Server) kvTarget(r *http.Request, withKey bool) (tok, bucket, key string, err error) {
	if tok, err = s.bearer(r); err != nil {
		return "", "", "", err
	}
	if bucket, err = kvParam(r, "bucket"); err == nil {
		err = bridge.ValidateBucket(bucket)
	}
	if err == nil && withKey {
		// The key is the rest of the path: keys may hold '/'.
		if key, err = kvParam(r, "*"); err == nil {
			err = bridge.ValidateKey(key)
		}
	}
	return tok, bucket, key, err
}

// kvRecorder notes the status a key-value handler answered, for the
// operations metric.
type kvRecorder struct {
	http.ResponseWriter
	status int
}

func (k *kvRecorder) WriteHeader(code int) {
	if k.status == 0 {
		k.status = code
	}
	k.ResponseWriter.WriteHeader(code)
}

func (k *kvRecorder) Write(p []byte) (int, error) {
	if k.status == 0 {
		k.status = http.StatusOK
	}
	return k.ResponseWriter.Write(p)
}

func (k *kvRecorder) Unwrap() http.ResponseWriter { return k.ResponseWriter }

// kvScope is what a key-value route's path names.
type kvScope int

const (
	kvAccount kvScope = iota // no bucket: the account's buckets
	kvBucket                 // {bucket}
	kvKey                    // {bucket} and the key
)

// kvRequest is a key-value request as kvHandler hands it on: the token,
// the bucket and key its scope names, checked, and its connection once
// the handler asks for it.
type kvRequest struct {
	s           *Server
	r           *http.Request
	tok         string
	bucket, key string
	op          string // the operation counted; the handler may refine it (a conditional put is an "update")
	release     func()
}

// connect connects for the call, once the handler has checked what it
// reads before anything reaches NATS, and bounds the call by the request
// timeout. kvHandler gives the connection back when the handler returns.
func (k *kvRequest) connect() (context.Context, *bridge.Conn, error) {
	c, err := k.s.connect(k.r.Context(), k.r.RemoteAddr, k.tok)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(k.r.Context(), k.s.cfg.RequestTimeout)
	k.release = func() { cancel(); c.Release() }
	return ctx, c, nil
}

// kvHandler adapts a key-value handler as apiHandler does: the token,
// bucket and key of scope are read and checked (kvTarget) before h
// runs, and the operation (op, or what h made of it) is counted by the
// status it answered.
func (s *Server) kvHandler(op string, scope kvScope, h func(w http.ResponseWriter, r *http.Request, k *kvRequest) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rec := &kvRecorder{ResponseWriter: w}
		k := &kvRequest{s: s, r: r, op: op}
		defer func() {
			if k.release != nil {
				k.release()
			}
		}()
		var err error
		if scope == kvAccount {
			k.tok, err = s.bearer(r)
		} else {
			k.tok, k.bucket, k.key, err = s.kvTarget(r, scope == kvKey)
		}
		if err == nil {
			err = h(rec, r, k)
		}
		status := rec.status
		if err != nil {
			status, _ = classify(err)
			writeError(rec, r, err)
		}
		if status != 499 && status != 0 {
			s.metrics.kvOps.WithLabelValues(k.op, strconv.Itoa(status)).Inc()
		}
	}
}

// etag is a revision as an entity tag.
func etag(rev uint64) string { return `"` + strconv.FormatUint(rev, 10) + `"` }

// parseRevisionTag reads an If-Match header: one strong entity tag
// holding a revision, "6".
func parseRevisionTag(h http.Header) (rev uint64, ok bool, err error) {
	vals := h.Values("If-Match")
	if len(vals) == 0 {
		return 0, false, nil
	}
	v := strings.TrimSpace(strings.Join(vals, ","))
	if len(v) < 3 || v[0] != '"' || v[len(v)-1] != '"' {
		return 0, false, badRequest(`If-Match must be one quoted revision, like "6" (got %q)`, v)
	}
	rev, err = strconv.ParseUint(v[1:len(v)-1], 10, 64)
	if err != nil || rev == 0 {
		return 0, false, badRequest(`If-Match must be one quoted revision, like "6" (got %q)`, v)
	}
	return rev, true, nil
}

// noneMatch reports whether an If-None-Match header matches a revision's
// tag: "*" or a list of tags, compared weakly (RFC 9110 13.1.2).
func noneMatch(h http.Header, rev uint64) bool {
	tag := etag(rev)
	for _, v := range h.Values("If-None-Match") {
		for t := range strings.SplitSeq(v, ",") {
			t = strings.TrimSpace(t)
			if t == "*" || strings.TrimPrefix(t, "W/") == tag {
				return true
			}
		}
	}
	return false
}

// revisionParam reads an optional query parameter holding a revision
// (0 allowed only where zeroOK).
func revisionParam(r *http.Request, name string, zeroOK bool) (rev uint64, ok bool, err error) {
	if r.URL.RawQuery == "" || !r.URL.Query().Has(name) {
		return 0, false, nil
	}
	v := r.URL.Query().Get(name)
	rev, err = strconv.ParseUint(v, 10, 64)
	if err != nil || (rev == 0 && !zeroOK) {
		return 0, false, badRequest("%s %q is not a revision (a whole number from 1)", name, v)
	}
	return rev, true, nil
}

// wantsJSON reports whether a request asks for JSON.
func wantsJSON(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "application/json")
}

// kvEntryJSON is the entry object of the API contract.
type kvEntryJSON struct {
	Bucket     string  `json:"bucket"`
	Key        string  `json:"key"`
	Revision   uint64  `json:"revision"`
	Created    string  `json:"created"`
	Delta      uint64  `json:"delta"`
	Operation  string  `json:"operation"`
	Data       *string `json:"data,omitempty"`
	DataBase64 []byte  `json:"data_base64,omitempty"`
}

func entryJSON(e *bridge.KVEntry) kvEntryJSON {
	j := kvEntryJSON{Bucket: e.Bucket, Key: e.Key, Revision: e.Revision, Created: formatCreated(e.Created),
		Delta: e.Delta, Operation: e.Operation}
	if e.Operation == bridge.KVPut {
		if utf8.Valid(e.Value) {
			v := string(e.Value)
			j.Data = &v
		} else {
			j.DataBase64 = e.Value
		}
	}
	return j
}

func formatCreated(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// handleKVGet handles "GET /v1/kv/{bucket}/{key}[?revision=N]": the raw
// value with its revision as ETag and X-Nats-Kv-* headers, or the entry
// object for Accept: application/json; 304 for an If-None-Match naming
// the revision found.
func (s *Server) handleKVGet() http.HandlerFunc {
	return s.kvHandler("get", kvKey, func(w http.ResponseWriter, r *http.Request, k *kvRequest) error {
		rev, _, err := revisionParam(r, "revision", false)
		if err != nil {
			return err
		}
		ctx, c, err := k.connect()
		if err != nil {
			return err
		}
		e, err := c.KVGet(ctx, k.bucket, k.key, rev)
		if err != nil {
			return err
		}
		h := w.Header()
		h.Set("ETag", etag(e.Revision))
		if noneMatch(r.Header, e.Revision) {
			w.WriteHeader(http.StatusNotModified)
			return nil
		}
		h.Set("X-Nats-Kv-Bucket", e.Bucket)
		h.Set("X-Nats-Kv-Key", e.Key)
		h.Set("X-Nats-Kv-Revision", strconv.FormatUint(e.Revision, 10))
		h.Set("X-Nats-Kv-Created", formatCreated(e.Created))
		h.Set("X-Nats-Kv-Delta", strconv.FormatUint(e.Delta, 10))
		h.Set("X-Nats-Kv-Operation", e.Operation)
		if wantsJSON(r) {
			writeJSON(w, http.StatusOK, entryJSON(e))
			return nil
		}
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Content-Length", strconv.Itoa(len(e.Value)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(e.Value)
		return nil
	})
}

// writeRevision answers a stored value's revision: a bare JSON number,
// and the ETag a later If-Match can name.
func writeRevision(w http.ResponseWriter, rev uint64) {
	h := w.Header()
	h.Set("ETag", etag(rev))
	h.Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(strconv.AppendUint(nil, rev, 10))
}

// asConflict turns a failed precondition into a 409 (Synadia's forms
// answer a stale revision or an existing key with 409, not 412).
func asConflict(err error) error {
	if errors.Is(err, bridge.ErrPrecondition) {
		return fmt.Errorf("%w: %s", bridge.ErrConflict, strings.TrimPrefix(err.Error(), bridge.ErrPrecondition.Error()+": "))
	}
	return err
}

// handleKVPut handles "PUT /v1/kv/{bucket}/{key}": stores the body and
// answers its revision. If-Match: "6" stores only at revision 6 and
// If-None-Match: * only where the key has no value (else 412);
// ?previousRevision=6 is Synadia's If-Match, answered 409 on a mismatch.
func (s *Server) handleKVPut() http.HandlerFunc {
	return s.kvHandler("put", kvKey, func(w http.ResponseWriter, r *http.Request, k *kvRequest) error {
		mode, conflict := bridge.KVAlways, false
		rev, ifMatch, err := parseRevisionTag(r.Header)
		if err != nil {
			return err
		}
		prev, hasPrev, err := revisionParam(r, "previousRevision", true)
		if err != nil {
			return err
		}
		inm := r.Header.Values("If-None-Match")
		switch {
		case ifMatch && hasPrev, ifMatch && len(inm) > 0, hasPrev && len(inm) > 0:
			return badRequest("give one of If-Match, If-None-Match and previousRevision")
		case ifMatch:
			mode, k.op = bridge.KVIfRevision, "update"
		case hasPrev:
			mode, rev, conflict, k.op = bridge.KVIfRevision, prev, true, "update"
		case len(inm) > 0:
			if len(inm) > 1 || strings.TrimSpace(inm[0]) != "*" {
				return badRequest("If-None-Match on a PUT takes only *: store only where the key has no value")
			}
			mode, k.op = bridge.KVIfAbsent, "create"
		}
		ctx, c, err := k.connect()
		if err != nil {
			return err
		}
		value, err := s.readBody(w, r, c.MaxPayload())
		if err != nil {
			return err
		}
		rev, err = c.KVPut(ctx, k.bucket, k.key, value, mode, rev)
		if conflict {
			err = asConflict(err)
		}
		if err != nil {
			return err
		}
		writeRevision(w, rev)
		return nil
	})
}

// handleKVCreate handles "POST /v1/kv/{bucket}/{key}": stores the body
// only where the key has no value; 409 where it has one.
func (s *Server) handleKVCreate() http.HandlerFunc {
	return s.kvHandler("create", kvKey, func(w http.ResponseWriter, r *http.Request, k *kvRequest) error {
		ctx, c, err := k.connect()
		if err != nil {
			return err
		}
		value, err := s.readBody(w, r, c.MaxPayload())
		if err != nil {
			return err
		}
		rev, err := c.KVPut(ctx, k.bucket, k.key, value, bridge.KVIfAbsent, 0)
		if err != nil {
			return asConflict(err)
		}
		writeRevision(w, rev)
		return nil
	})
}

// handleKVDelete handles "DELETE /v1/kv/{bucket}/{key}[?purge=true]":
// a delete marker (history kept) or, with purge, the key's history gone
// too; If-Match: "6" deletes only at revision 6, else 412.
func (s *Server) handleKVDelete() http.HandlerFunc {
	return s.kvHandler("delete", kvKey, func(w http.ResponseWriter, r *http.Request, k *kvRequest) error {
		rev, _, err := parseRevisionTag(r.Header)
		if err != nil {
			return err
		}
		purge := false
		if v := queryValue(r, "purge"); v != "" {
			if purge, err = strconv.ParseBool(v); err != nil {
				return badRequest("purge %q is not true or false", v)
			}
		}
		if purge {
			k.op = "purge"
		}
		ctx, c, err := k.connect()
		if err != nil {
			return err
		}
		if err := c.KVDelete(ctx, k.bucket, k.key, purge, rev); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

// handleKVBuckets handles "GET /v1/kvm/buckets": the bucket names.
func (s *Server) handleKVBuckets() http.HandlerFunc {
	return s.kvHandler("bucket_list", kvAccount, func(w http.ResponseWriter, r *http.Request, k *kvRequest) error {
		ctx, c, err := k.connect()
		if err != nil {
			return err
		}
		names, err := c.KVBuckets(ctx)
		if err != nil {
			return err
		}
		if names == nil {
			names = []string{}
		}
		writeJSON(w, http.StatusOK, names)
		return nil
	})
}

// kvBucketJSON is a bucket's description: configuration and state.
type kvBucketJSON struct {
	Bucket       string            `json:"bucket"`
	Description  string            `json:"description,omitempty"`
	Values       uint64            `json:"values"`
	History      int64             `json:"history"`
	TTL          int64             `json:"ttl"`
	Storage      string            `json:"storage"`
	Bytes        uint64            `json:"bytes"`
	Compression  bool              `json:"compression"`
	MaxBytes     int64             `json:"max_bytes"`
	MaxValueSize int32             `json:"max_value_size"`
	Replicas     int               `json:"replicas"`
	Metadata     map[string]string `json:"metadata,omitempty"`
}

func bucketJSON(i *bridge.KVBucketInfo) kvBucketJSON {
	return kvBucketJSON{Bucket: i.Bucket, Description: i.Description, Values: i.Values, History: i.History,
		TTL: int64(i.TTL), Storage: i.Storage, Bytes: i.Bytes, Compression: i.Compression,
		MaxBytes: i.MaxBytes, MaxValueSize: i.MaxValueSize, Replicas: i.Replicas, Metadata: i.Metadata}
}

// nsDuration is a duration in JSON: nanoseconds (what Synadia's gateway
// and nats-server's own JSON use), or a Go duration string ("1h").
type nsDuration time.Duration

func (d *nsDuration) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("ttl %q is not a duration like \"1h\"", s)
		}
		*d = nsDuration(v)
		return nil
	}
	v, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return fmt.Errorf("ttl %s is not a whole number of nanoseconds", b)
	}
	*d = nsDuration(v)
	return nil
}

// kvBucketConfigJSON is the body of a bucket creation.
type kvBucketConfigJSON struct {
	Description  string            `json:"description"`
	History      *int64            `json:"history"`
	TTL          *nsDuration       `json:"ttl"`
	MaxBytes     *int64            `json:"max_bytes"`
	MaxValueSize *int64            `json:"max_value_size"`
	Storage      *string           `json:"storage"`
	Replicas     *int64            `json:"replicas"`
	NumReplicas  *int64            `json:"num_replicas"`
	Compression  bool              `json:"compression"`
	Metadata     map[string]string `json:"metadata"`
}

// parseBucketConfig reads a bucket configuration: an empty body means
// every default; unknown fields and out-of-range values are errors.
func parseBucketConfig(body []byte) (bridge.KVBucketConfig, error) {
	var cfg bridge.KVBucketConfig
	if len(bytes.TrimSpace(body)) == 0 {
		return cfg, nil
	}
	var j kvBucketConfigJSON
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return cfg, badRequest("bucket configuration: %v", err)
	}
	if dec.More() {
		return cfg, badRequest("bucket configuration: data after the JSON object")
	}
	cfg.Description, cfg.Compression, cfg.Metadata = j.Description, j.Compression, j.Metadata
	if j.History != nil {
		if *j.History < 0 || *j.History > 64 {
			return cfg, badRequest("history %d: a bucket keeps 1 to 64 values per key", *j.History)
		}
		cfg.History = int(*j.History)
	}
	if j.TTL != nil {
		if *j.TTL < 0 {
			return cfg, badRequest("ttl must not be negative")
		}
		cfg.TTL = time.Duration(*j.TTL)
	}
	if j.MaxBytes != nil {
		if *j.MaxBytes < -1 {
			return cfg, badRequest("max_bytes %d: -1 or 0 for no bound, else a number of bytes", *j.MaxBytes)
		}
		cfg.MaxBytes = *j.MaxBytes
	}
	if j.MaxValueSize != nil {
		if *j.MaxValueSize < -1 || *j.MaxValueSize > math.MaxInt32 {
			return cfg, badRequest("max_value_size %d: -1 or 0 for no bound, else a number of bytes up to %d", *j.MaxValueSize, math.MaxInt32)
		}
		cfg.MaxValueSize = int32(*j.MaxValueSize)
	}
	if j.Storage != nil {
		switch *j.Storage {
		case "file":
		case "memory":
			cfg.Memory = true
		default:
			return cfg, badRequest(`storage %q: "file" or "memory"`, *j.Storage)
		}
	}
	replicas := j.Replicas
	if j.NumReplicas != nil {
		if replicas != nil && *replicas != *j.NumReplicas {
			return cfg, badRequest("replicas and num_replicas differ")
		}
		replicas = j.NumReplicas
	}
	if replicas != nil {
		if *replicas < 0 || *replicas > 5 {
			return cfg, badRequest("replicas %d: 1 to 5", *replicas)
		}
		cfg.Replicas = int(*replicas)
	}
	return cfg, nil
}

// handleKVBucketCreate handles "POST /v1/kvm/buckets/{bucket}": 201 with
// the new bucket's description; 200 with it when the bucket already
// exists with that configuration; 409 when it exists with another.
func (s *Server) handleKVBucketCreate() http.HandlerFunc {
	return s.kvHandler("bucket_create", kvBucket, func(w http.ResponseWriter, r *http.Request, k *kvRequest) error {
		body, err := s.readBody(w, r, maxBucketConfig)
		if err != nil {
			return err
		}
		cfg, err := parseBucketConfig(body)
		if err != nil {
			return err
		}
		ctx, c, err := k.connect()
		if err != nil {
			return err
		}
		info, created, err := c.KVCreateBucket(ctx, k.bucket, cfg)
		if err != nil {
			return err
		}
		status := http.StatusOK
		if created {
			status = http.StatusCreated
		}
		writeJSON(w, status, bucketJSON(info))
		return nil
	})
}

// handleKVBucketInfo handles "GET /v1/kvm/buckets/{bucket}".
func (s *Server) handleKVBucketInfo() http.HandlerFunc {
	return s.kvHandler("bucket_info", kvBucket, func(w http.ResponseWriter, r *http.Request, k *kvRequest) error {
		ctx, c, err := k.connect()
		if err != nil {
			return err
		}
		info, err := c.KVBucket(ctx, k.bucket)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, bucketJSON(info))
		return nil
	})
}

// handleKVBucketDelete handles "DELETE /v1/kvm/buckets/{bucket}".
func (s *Server) handleKVBucketDelete() http.HandlerFunc {
	return s.kvHandler("bucket_delete", kvBucket, func(w http.ResponseWriter, r *http.Request, k *kvRequest) error {
		ctx, c, err := k.connect()
		if err != nil {
			return err
		}
		if err := c.KVDeleteBucket(ctx, k.bucket); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

// handleKVKeys handles "GET /v1/kvm/buckets/{bucket}/keys[?filter=a.>]":
// the keys with a value, as a JSON array (keysWriter); filter may be
// repeated. An error before the first key is problem+json; one after
// cuts the response short.
func (s *Server) handleKVKeys() http.HandlerFunc {
	return s.kvHandler("keys", kvBucket, func(w http.ResponseWriter, r *http.Request, k *kvRequest) error {
		var filters []string
		if r.URL.RawQuery != "" {
			filters = r.URL.Query()["filter"]
		}
		for _, f := range filters {
			if err := bridge.ValidateKeyFilter(f); err != nil {
				return err
			}
		}
		_, c, err := k.connect()
		if err != nil {
			return err
		}
		// A long listing may take longer than the request timeout, which
		// bounds each wait for NATS instead (the client's pace is bounded
		// by WriteTimeout).
		ctx, cancel := context.WithCancelCause(r.Context())
		defer cancel(nil)
		idle := time.AfterFunc(s.cfg.RequestTimeout, func() {
			cancel(fmt.Errorf("no key from NATS within %v", s.cfg.RequestTimeout))
		})
		defer idle.Stop()
		kw := &keysWriter{w: w, write: s.flushingWriter(w)}
		add := func(key string) error {
			idle.Stop()
			defer idle.Reset(s.cfg.RequestTimeout)
			return kw.add(key)
		}
		if err := c.KVKeys(ctx, k.bucket, filters, add); err != nil {
			if kw.streaming {
				panic(http.ErrAbortHandler) // the client sees the body cut short
			}
			return err
		}
		kw.end()
		return nil
	})
}

// keysSorted bounds the keys a listing sorts: as many as make this many
// bytes of JSON. Keys that fit are answered sorted, in one piece; beyond,
// the answer streams out as the keys come, in the bucket's order (by
// their last revision), so a listing holds little whatever the bucket
// holds.
const keysSorted = 64 << 10

// keysFlush is how much streamed JSON is held back before it is written
// and flushed.
const keysFlush = 32 << 10

// errClientGone stops a listing whose client no longer takes it.
var errClientGone = errors.New("the client went away")

// keysWriter answers a key listing, fed by bridge.Conn.KVKeys.
type keysWriter struct {
	w         http.ResponseWriter
	write     func([]byte) bool
	keys      []string // until streaming
	size      int      // their JSON's size
	streaming bool
	buf       bytes.Buffer // streamed JSON not yet written
	enc       *json.Encoder
}

func (k *keysWriter) add(key string) error {
	if !k.streaming {
		k.keys = append(k.keys, key)
		if k.size += len(key) + len(`"",`); k.size <= keysSorted {
			return nil
		}
		k.streaming = true
		k.w.Header().Set("Content-Type", "application/json")
		k.w.WriteHeader(http.StatusOK)
		k.enc = json.NewEncoder(&k.buf)
		k.enc.SetEscapeHTML(false) // as writeJSON
		k.buf.WriteByte('[')
		for i, key := range k.keys {
			k.append(i > 0, key)
		}
		k.keys = nil
	} else {
		k.append(true, key)
	}
	if k.buf.Len() < keysFlush {
		return nil
	}
	return k.flush()
}

// append adds a key to the streamed JSON.
func (k *keysWriter) append(comma bool, key string) {
	if comma {
		k.buf.WriteByte(',')
	}
	_ = k.enc.Encode(key)
	k.buf.Truncate(k.buf.Len() - 1) // Encode's newline
}

func (k *keysWriter) flush() error {
	ok := k.write(k.buf.Bytes())
	k.buf.Reset()
	if !ok {
		return errClientGone
	}
	return nil
}

// end finishes the answer once every key was added: the keys sorted, or
// the streamed array closed.
func (k *keysWriter) end() {
	if !k.streaming {
		slices.Sort(k.keys)
		keys := slices.Compact(k.keys)
		if keys == nil {
			keys = []string{}
		}
		writeJSON(k.w, http.StatusOK, keys)
		return
	}
	k.buf.WriteString("]\n")
	_ = k.flush()
	// The connection may serve further requests: no deadline left on it.
	_ = http.NewResponseController(k.w).SetWriteDeadline(time.Time{})
}
