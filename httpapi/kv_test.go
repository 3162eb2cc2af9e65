package httpapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natsgate/natsgate/bridge"
)

// kvToken may use the JetStream API and the bucket "cfg" only (and
// receive replies); the orders token may not use JetStream at all.
const kvToken = "kv-Tok3n-with-a-recognisable-SECRET"

func withKVTokens(o *gatewayOptions) {
	o.tokens = append(o.tokens, bridge.Token{Name: "kv", Token: kvToken,
		Publish:   &bridge.SubjectPermission{Allow: []string{"$JS.API.>", "$KV.cfg.>"}},
		Subscribe: &bridge.SubjectPermission{Allow: []string{"_INBOX.>"}}})
}

// startKV is a test gateway with JetStream and the bucket "cfg", made
// with config (JSON; empty for the defaults).
func startKV(t *testing.T, config string) *gateway {
	t.Helper()
	g := startGateway(t, withJetStream, withKVTokens)
	if resp, body := g.do("POST", "/v1/kvm/buckets/cfg", adminToken, strings.NewReader(config)); resp.StatusCode != 201 {
		t.Fatalf("creating the bucket: %d %s", resp.StatusCode, body)
	}
	return g
}

// mustPut stores a value and returns its revision.
func (g *gateway) mustPut(path, value string, hdr ...string) uint64 {
	g.t.Helper()
	resp, body := g.do("PUT", path, adminToken, strings.NewReader(value), hdr...)
	if resp.StatusCode != 200 {
		g.t.Fatalf("PUT %s: %d %s", path, resp.StatusCode, body)
	}
	rev, err := strconv.ParseUint(string(body), 10, 64)
	if err != nil || resp.Header.Get("ETag") != `"`+string(body)+`"` {
		g.t.Fatalf("PUT %s: body %q, ETag %q; want a bare revision and the same as ETag", path, body, resp.Header.Get("ETag"))
	}
	return rev
}

// wantKind checks an error response's problem type.
func wantKind(t testing.TB, resp *http.Response, body []byte, status int, kind string) {
	t.Helper()
	wantProblem(t, resp, body, status, "")
	var p problem
	_ = json.Unmarshal(body, &p)
	if p.Type != problemType(kind) {
		t.Fatalf("problem type %q, want %q (%s)", p.Type, problemType(kind), body)
	}
}

func TestKVPutAndGetRoundTripBinaryValuesWithRevisionHeaders(t *testing.T) {
	t.Parallel()
	g := startKV(t, "")
	binary := make([]byte, 256)
	for i := range binary {
		binary[i] = byte(i)
	}
	before := time.Now().Add(-time.Second)
	rev := g.mustPut("/v1/kv/cfg/blob", string(binary))
	if rev != 1 {
		t.Fatalf("first revision %d, want 1", rev)
	}
	resp, body := g.do("GET", "/v1/kv/cfg/blob", adminToken, nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, binary) {
		t.Fatalf("GET: %d, %d bytes, want the 256 bytes put", resp.StatusCode, len(body))
	}
	h := resp.Header
	for name, want := range map[string]string{"ETag": `"1"`, "X-Nats-Kv-Bucket": "cfg", "X-Nats-Kv-Key": "blob",
		"X-Nats-Kv-Revision": "1", "X-Nats-Kv-Delta": "0", "X-Nats-Kv-Operation": "PUT", "Content-Type": "application/octet-stream"} {
		if got := h.Get(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	created, err := time.Parse(time.RFC3339, h.Get("X-Nats-Kv-Created"))
	if err != nil || created.Before(before) || created.After(time.Now().Add(time.Second)) {
		t.Fatalf("X-Nats-Kv-Created %q (%v), want RFC 3339 of about now", h.Get("X-Nats-Kv-Created"), err)
	}

	// The entry object: data_base64 for binary values, data for text.
	resp, body = g.do("GET", "/v1/kv/cfg/blob", adminToken, nil, "Accept", "application/json")
	var e map[string]any
	if err := json.Unmarshal(body, &e); err != nil || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("JSON entry %s: %v", body, err)
	}
	if e["bucket"] != "cfg" || e["key"] != "blob" || e["revision"] != 1.0 || e["delta"] != 0.0 || e["operation"] != "PUT" ||
		e["data_base64"] != base64.StdEncoding.EncodeToString(binary) || e["data"] != nil || e["created"] != h.Get("X-Nats-Kv-Created") {
		t.Fatalf("entry %s", body)
	}
	if rev := g.mustPut("/v1/kv/cfg/text", "héllo"); rev != 2 {
		t.Fatalf("second revision %d, want 2", rev)
	}
	_, body = g.do("GET", "/v1/kv/cfg/text", adminToken, nil, "Accept", "application/json")
	e = nil
	if json.Unmarshal(body, &e); e["data"] != "héllo" || e["data_base64"] != nil || e["revision"] != 2.0 {
		t.Fatalf("text entry %s", body)
	}
	// An empty value is a value.
	g.mustPut("/v1/kv/cfg/empty", "")
	if resp, body := g.do("GET", "/v1/kv/cfg/empty", adminToken, nil); resp.StatusCode != 200 || len(body) != 0 {
		t.Fatalf("empty value: %d %q", resp.StatusCode, body)
	}
	// A native client sees the same bytes.
	kv := nativeKV(t, g, "cfg")
	got, err := kv.Get(context.Background(), "blob")
	if err != nil || !bytes.Equal(got.Value(), binary) || got.Revision() != 1 {
		t.Fatalf("native Get: %v", err)
	}
}

func nativeKV(t *testing.T, g *gateway, bucket string) jetstream.KeyValue {
	t.Helper()
	js, err := jetstream.New(g.native(adminToken))
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), bucket)
	if err != nil {
		t.Fatalf("native KeyValue %s: %v", bucket, err)
	}
	return kv
}

func TestKVMissingKeyAndBucketAre404WithTheirKinds(t *testing.T) {
	t.Parallel()
	g := startKV(t, "")
	resp, body := g.do("GET", "/v1/kv/cfg/nothing", adminToken, nil)
	wantKind(t, resp, body, 404, "no-key")
	resp, body = g.do("GET", "/v1/kv/nobucket/a", adminToken, nil)
	wantKind(t, resp, body, 404, "no-bucket")
	for _, m := range []string{"PUT", "POST", "DELETE"} {
		resp, body = g.do(m, "/v1/kv/nobucket/a", adminToken, strings.NewReader("v"))
		wantKind(t, resp, body, 404, "no-bucket")
	}
	resp, body = g.do("GET", "/v1/kvm/buckets/nobucket/keys", adminToken, nil)
	wantKind(t, resp, body, 404, "no-bucket")
}

func TestKVConditionalPutsAnswer412Or409(t *testing.T) {
	t.Parallel()
	g := startKV(t, "")
	rev := g.mustPut("/v1/kv/cfg/k", "one")

	resp, body := g.do("PUT", "/v1/kv/cfg/k", adminToken, strings.NewReader("stale"), "If-Match", `"`+strconv.FormatUint(rev+5, 10)+`"`)
	wantKind(t, resp, body, 412, "precondition-failed")
	rev2 := g.mustPut("/v1/kv/cfg/k", "two", "If-Match", `"`+strconv.FormatUint(rev, 10)+`"`)
	if rev2 <= rev {
		t.Fatalf("revision after If-Match %d, want above %d", rev2, rev)
	}
	resp, body = g.do("PUT", "/v1/kv/cfg/k", adminToken, strings.NewReader("again"), "If-Match", `"`+strconv.FormatUint(rev, 10)+`"`)
	wantKind(t, resp, body, 412, "precondition-failed")

	resp, body = g.do("PUT", "/v1/kv/cfg/k", adminToken, strings.NewReader("x"), "If-None-Match", "*")
	wantKind(t, resp, body, 412, "precondition-failed")
	g.mustPut("/v1/kv/cfg/fresh", "new", "If-None-Match", "*")

	// Synadia's form: 409.
	resp, body = g.do("PUT", "/v1/kv/cfg/k?previousRevision="+strconv.FormatUint(rev, 10), adminToken, strings.NewReader("x"))
	wantKind(t, resp, body, 409, "conflict")
	rev3 := g.mustPut("/v1/kv/cfg/k?previousRevision="+strconv.FormatUint(rev2, 10), "three")
	g.mustPut("/v1/kv/cfg/never?previousRevision=0", "first")
	resp, body = g.do("PUT", "/v1/kv/cfg/never?previousRevision=0", adminToken, strings.NewReader("x"))
	wantKind(t, resp, body, 409, "conflict")

	// Nothing refused was stored.
	resp, body = g.do("GET", "/v1/kv/cfg/k", adminToken, nil)
	if string(body) != "three" || resp.Header.Get("ETag") != `"`+strconv.FormatUint(rev3, 10)+`"` {
		t.Fatalf("after the refused puts: %q %s", body, resp.Header.Get("ETag"))
	}

	for _, bad := range [][]string{
		{"If-Match", "6"}, {"If-Match", `W/"6"`}, {"If-Match", `"abc"`}, {"If-Match", "*"}, {"If-Match", `"0"`},
		{"If-Match", `"1", "2"`}, {"If-Match", `"-1"`}, {"If-None-Match", `"3"`},
		{"If-Match", `"3"`, "If-None-Match", "*"},
	} {
		resp, body := g.do("PUT", "/v1/kv/cfg/k", adminToken, strings.NewReader("bad"), bad...)
		wantKind(t, resp, body, 400, "bad-request")
	}
	for _, q := range []string{"previousRevision=abc", "previousRevision=-1", "previousRevision=1.5"} {
		resp, body := g.do("PUT", "/v1/kv/cfg/k?"+q, adminToken, strings.NewReader("bad"))
		wantProblem(t, resp, body, 400, "previousRevision")
	}
	resp, body = g.do("PUT", "/v1/kv/cfg/k?previousRevision=1", adminToken, strings.NewReader("bad"), "If-Match", `"1"`)
	wantProblem(t, resp, body, 400, "one of")
}

func TestKVCreateIs409WhenTheKeyHasAValue(t *testing.T) {
	t.Parallel()
	g := startKV(t, "")
	resp, body := g.do("POST", "/v1/kv/cfg/job", adminToken, strings.NewReader("v1"))
	if resp.StatusCode != 200 || string(body) != "1" || resp.Header.Get("ETag") != `"1"` {
		t.Fatalf("create: %d %q", resp.StatusCode, body)
	}
	resp, body = g.do("POST", "/v1/kv/cfg/job", adminToken, strings.NewReader("v2"))
	wantKind(t, resp, body, 409, "conflict")
	wantProblem(t, resp, body, 409, "the key has a value")
	if resp, _ := g.do("DELETE", "/v1/kv/cfg/job", adminToken, nil); resp.StatusCode != 204 {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	// A deleted key has no value: create works again.
	resp, body = g.do("POST", "/v1/kv/cfg/job", adminToken, strings.NewReader("v3"))
	if resp.StatusCode != 200 || string(body) != "3" {
		t.Fatalf("create after delete: %d %q", resp.StatusCode, body)
	}
	if _, body := g.do("GET", "/v1/kv/cfg/job", adminToken, nil); string(body) != "v3" {
		t.Fatalf("value %q, want v3", body)
	}
}

func TestKVRevisionReads(t *testing.T) {
	t.Parallel()
	g := startKV(t, `{"history":5}`)
	r1 := g.mustPut("/v1/kv/cfg/a", "v1")
	other := g.mustPut("/v1/kv/cfg/b", "other")
	r2 := g.mustPut("/v1/kv/cfg/a", "v2")
	for rev, want := range map[uint64]string{r1: "v1", r2: "v2"} {
		resp, body := g.do("GET", "/v1/kv/cfg/a?revision="+strconv.FormatUint(rev, 10), adminToken, nil)
		if resp.StatusCode != 200 || string(body) != want || resp.Header.Get("X-Nats-Kv-Revision") != strconv.FormatUint(rev, 10) {
			t.Fatalf("revision %d: %d %q %v", rev, resp.StatusCode, body, resp.Header)
		}
	}
	// A revision of another key, or none at all, is not a value of a.
	for _, rev := range []uint64{other, 99} {
		resp, body := g.do("GET", "/v1/kv/cfg/a?revision="+strconv.FormatUint(rev, 10), adminToken, nil)
		wantKind(t, resp, body, 404, "no-key")
	}
	for _, bad := range []string{"abc", "0", "-1", ""} {
		resp, body := g.do("GET", "/v1/kv/cfg/a?revision="+bad, adminToken, nil)
		wantProblem(t, resp, body, 400, "revision")
	}
}

func TestKVGetIfNoneMatchIs304(t *testing.T) {
	t.Parallel()
	g := startKV(t, "")
	rev := g.mustPut("/v1/kv/cfg/a", "v")
	tag := `"` + strconv.FormatUint(rev, 10) + `"`
	for _, inm := range []string{tag, "W/" + tag, `"999", ` + tag, "*"} {
		resp, body := g.do("GET", "/v1/kv/cfg/a", adminToken, nil, "If-None-Match", inm)
		if resp.StatusCode != 304 || len(body) != 0 || resp.Header.Get("ETag") != tag {
			t.Fatalf("If-None-Match %s: %d %q ETag %q", inm, resp.StatusCode, body, resp.Header.Get("ETag"))
		}
	}
	g.mustPut("/v1/kv/cfg/a", "changed")
	resp, body := g.do("GET", "/v1/kv/cfg/a", adminToken, nil, "If-None-Match", tag)
	if resp.StatusCode != 200 || string(body) != "changed" {
		t.Fatalf("after a change: %d %q", resp.StatusCode, body)
	}
}

func TestKVDeleteKeepsHistoryAndPurgeRemovesIt(t *testing.T) {
	t.Parallel()
	g := startKV(t, `{"history":10}`)
	d1 := g.mustPut("/v1/kv/cfg/del", "old")
	g.mustPut("/v1/kv/cfg/del", "new")
	if resp, body := g.do("DELETE", "/v1/kv/cfg/del", adminToken, nil); resp.StatusCode != 204 {
		t.Fatalf("delete: %d %s", resp.StatusCode, body)
	}
	resp, body := g.do("GET", "/v1/kv/cfg/del", adminToken, nil)
	wantKind(t, resp, body, 404, "no-key")
	if resp, body := g.do("GET", "/v1/kv/cfg/del?revision="+strconv.FormatUint(d1, 10), adminToken, nil); resp.StatusCode != 200 || string(body) != "old" {
		t.Fatalf("a deleted key's history: %d %q", resp.StatusCode, body)
	}

	p1 := g.mustPut("/v1/kv/cfg/pur", "old")
	p2 := g.mustPut("/v1/kv/cfg/pur", "new")
	if resp, body := g.do("DELETE", "/v1/kv/cfg/pur?purge=true", adminToken, nil); resp.StatusCode != 204 {
		t.Fatalf("purge: %d %s", resp.StatusCode, body)
	}
	for _, path := range []string{"/v1/kv/cfg/pur", "/v1/kv/cfg/pur?revision=" + strconv.FormatUint(p1, 10), "/v1/kv/cfg/pur?revision=" + strconv.FormatUint(p2, 10)} {
		resp, body := g.do("GET", path, adminToken, nil)
		wantKind(t, resp, body, 404, "no-key")
	}
	hist, err := nativeKV(t, g, "cfg").History(context.Background(), "pur")
	if err != nil || len(hist) != 1 || hist[0].Operation() != jetstream.KeyValuePurge {
		t.Fatalf("after purge the history is %d entries (%v), want the purge marker only", len(hist), err)
	}
	hist, _ = nativeKV(t, g, "cfg").History(context.Background(), "del")
	if len(hist) != 3 || hist[2].Operation() != jetstream.KeyValueDelete {
		t.Fatalf("after delete the history is %d entries, want 2 values and the marker", len(hist))
	}

	// If-Match on delete.
	rev := g.mustPut("/v1/kv/cfg/cond", "v")
	resp, body = g.do("DELETE", "/v1/kv/cfg/cond", adminToken, nil, "If-Match", `"`+strconv.FormatUint(rev+1, 10)+`"`)
	wantKind(t, resp, body, 412, "precondition-failed")
	resp, body = g.do("DELETE", "/v1/kv/cfg/cond?purge=true", adminToken, nil, "If-Match", `"`+strconv.FormatUint(rev+1, 10)+`"`)
	wantKind(t, resp, body, 412, "precondition-failed")
	if _, body := g.do("GET", "/v1/kv/cfg/cond", adminToken, nil); string(body) != "v" {
		t.Fatalf("a refused delete deleted: %q", body)
	}
	if resp, _ := g.do("DELETE", "/v1/kv/cfg/cond", adminToken, nil, "If-Match", `"`+strconv.FormatUint(rev, 10)+`"`); resp.StatusCode != 204 {
		t.Fatalf("delete at the right revision: %d", resp.StatusCode)
	}
	resp, body = g.do("DELETE", "/v1/kv/cfg/cond?purge=maybe", adminToken, nil)
	wantProblem(t, resp, body, 400, "purge")
	resp, body = g.do("DELETE", "/v1/kv/cfg/cond", adminToken, nil, "If-Match", "7")
	wantProblem(t, resp, body, 400, "If-Match")
}

func TestKVKeysListsKeysWithValuesByFilter(t *testing.T) {
	t.Parallel()
	g := startKV(t, "")
	keys := func(query string) []string {
		t.Helper()
		resp, body := g.do("GET", "/v1/kvm/buckets/cfg/keys"+query, adminToken, nil)
		var got []string
		if resp.StatusCode != 200 || json.Unmarshal(body, &got) != nil || got == nil {
			t.Fatalf("keys%s: %d %s", query, resp.StatusCode, body)
		}
		return got
	}
	if got := keys(""); len(got) != 0 {
		t.Fatalf("empty bucket: %v", got)
	}
	for _, k := range []string{"a.2", "a.1", "b.1", "a.x.deep", "gone", "a.1"} {
		g.mustPut("/v1/kv/cfg/"+k, "v")
	}
	g.do("DELETE", "/v1/kv/cfg/gone", adminToken, nil)
	if resp, body := g.do("GET", "/v1/kvm/buckets/cfg/keys", adminToken, nil); string(body) != `["a.1","a.2","a.x.deep","b.1"]`+"\n" ||
		resp.Header.Get("Content-Length") != strconv.Itoa(len(body)) {
		t.Fatalf("keys answered %q, Content-Length %q", body, resp.Header.Get("Content-Length"))
	}
	for query, want := range map[string][]string{
		"":                       {"a.1", "a.2", "a.x.deep", "b.1"},
		"?filter=a.>":            {"a.1", "a.2", "a.x.deep"},
		"?filter=a.*":            {"a.1", "a.2"},
		"?filter=b.1":            {"b.1"},
		"?filter=a.1&filter=b.*": {"a.1", "b.1"},
		"?filter=zzz.>":          {},
		"?filter=gone":           {},
	} {
		if got := keys(query); !slices.Equal(got, want) {
			t.Errorf("keys%s = %v, want %v", query, got, want)
		}
	}
	for _, bad := range []string{"a..b", ".a", "a.", "a%20b", ""} {
		resp, body := g.do("GET", "/v1/kvm/buckets/cfg/keys?filter="+bad, adminToken, nil)
		wantKind(t, resp, body, 400, "bad-key")
	}
}

func TestKVBucketsCreateListDescribeDelete(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream)
	list := func() []string {
		t.Helper()
		resp, body := g.do("GET", "/v1/kvm/buckets", adminToken, nil)
		var got []string
		if resp.StatusCode != 200 || json.Unmarshal(body, &got) != nil || got == nil {
			t.Fatalf("list: %d %s", resp.StatusCode, body)
		}
		return got
	}
	if got := list(); len(got) != 0 {
		t.Fatalf("no buckets yet: %v", got)
	}
	// A plain stream is not a bucket.
	js, _ := jetstream.New(g.native(adminToken))
	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.>"}}); err != nil {
		t.Fatal(err)
	}
	cfg := `{"description":"settings","history":5,"ttl":3600000000000,"max_bytes":1048576,"max_value_size":1024,"storage":"memory","replicas":1,"compression":true,"metadata":{"team":"a"}}`
	// No Content-Type, as Synadia's clients send it.
	resp, body := g.do("POST", "/v1/kvm/buckets/settings", adminToken, strings.NewReader(cfg))
	if resp.StatusCode != 201 {
		t.Fatalf("create: %d %s", resp.StatusCode, body)
	}
	var info kvBucketJSON
	if err := json.Unmarshal(body, &info); err != nil {
		t.Fatal(err)
	}
	want := kvBucketJSON{Bucket: "settings", Description: "settings", History: 5, TTL: int64(time.Hour), Storage: "memory",
		Compression: true, MaxBytes: 1 << 20, MaxValueSize: 1024, Replicas: 1, Metadata: map[string]string{"team": "a"}}
	if info.Bytes != 0 || info.Values != 0 || info.Metadata["team"] != "a" || len(info.Metadata) != 1 {
		t.Fatalf("new bucket %s", body)
	}
	info.Metadata, want.Metadata = nil, nil
	if !reflect.DeepEqual(info, want) {
		t.Fatalf("create answered %+v, want %+v", info, want)
	}
	// The same again is fine (200); another configuration is 409.
	resp, body = g.do("POST", "/v1/kvm/buckets/settings", adminToken, strings.NewReader(cfg), "Content-Type", "application/json")
	if resp.StatusCode != 200 {
		t.Fatalf("create again with the same config: %d %s", resp.StatusCode, body)
	}
	resp, body = g.do("POST", "/v1/kvm/buckets/settings", adminToken, strings.NewReader(`{"history":2}`))
	wantKind(t, resp, body, 409, "conflict")

	// Defaults, with an empty body; num_replicas is nats.go's name.
	for _, b := range []string{"", `{"num_replicas":1}`} {
		name := "plain" + strconv.Itoa(len(b))
		resp, body = g.do("POST", "/v1/kvm/buckets/"+name, adminToken, strings.NewReader(b), "Content-Type", "text/plain")
		if resp.StatusCode != 201 {
			t.Fatalf("create %s: %d %s", name, resp.StatusCode, body)
		}
		info = kvBucketJSON{}
		json.Unmarshal(body, &info)
		if info.History != 1 || info.TTL != 0 || info.Storage != "file" || info.MaxBytes != -1 || info.MaxValueSize != -1 || info.Compression {
			t.Fatalf("defaults: %s", body)
		}
	}
	if got := list(); !slices.Equal(got, []string{"plain0", "plain18", "settings"}) {
		t.Fatalf("list %v", got)
	}

	g.mustPut("/v1/kv/settings/a", "12345")
	resp, body = g.do("GET", "/v1/kvm/buckets/settings", adminToken, nil)
	info = kvBucketJSON{}
	if resp.StatusCode != 200 || json.Unmarshal(body, &info) != nil || info.Values != 1 || info.Bytes == 0 || info.History != 5 || info.TTL != int64(time.Hour) {
		t.Fatalf("info: %d %s", resp.StatusCode, body)
	}

	if resp, body := g.do("DELETE", "/v1/kvm/buckets/settings", adminToken, nil); resp.StatusCode != 204 {
		t.Fatalf("delete: %d %s", resp.StatusCode, body)
	}
	for _, m := range []string{"GET", "DELETE"} {
		resp, body := g.do(m, "/v1/kvm/buckets/settings", adminToken, nil)
		wantKind(t, resp, body, 404, "no-bucket")
	}
	resp, body = g.do("GET", "/v1/kv/settings/a", adminToken, nil)
	wantKind(t, resp, body, 404, "no-bucket")
	resp, body = g.do("GET", "/v1/kvm/buckets/ORDERS", adminToken, nil)
	wantKind(t, resp, body, 404, "no-bucket")
}

func TestKVBadBucketConfigsAre400(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream)
	for _, tc := range []struct{ body, want string }{
		{`{"histroy":5}`, "unknown field"},
		{`{"history":65}`, "history"},
		{`{"history":-1}`, "history"},
		{`{"history":"5"}`, "history"},
		{`{"ttl":-1}`, "ttl"},
		{`{"ttl":"soon"}`, "ttl"},
		{`{"ttl":1.5}`, "ttl"},
		{`{"storage":"disk"}`, "storage"},
		{`{"replicas":9}`, "replicas"},
		{`{"replicas":1,"num_replicas":3}`, "differ"},
		{`{"max_value_size":4294967296}`, "max_value_size"},
		{`{"max_bytes":-2}`, "max_bytes"},
		{`{"compression":"yes"}`, "compression"},
		{`not json`, "bucket configuration"},
		{`[1]`, "bucket configuration"},
		{`{"history":1} {"history":2}`, "after"},
	} {
		resp, body := g.do("POST", "/v1/kvm/buckets/b", adminToken, strings.NewReader(tc.body))
		wantProblem(t, resp, body, 400, tc.want)
	}
	// The server's own refusal (a TTL it does not take) is a 400 too.
	resp, body := g.do("POST", "/v1/kvm/buckets/b", adminToken, strings.NewReader(`{"ttl":1000}`))
	wantProblem(t, resp, body, 400, "max age")
	resp, body = g.do("POST", "/v1/kvm/buckets/b", adminToken, strings.NewReader(strings.Repeat(" ", maxBucketConfig+1)))
	wantProblem(t, resp, body, 413, "")
	// Nothing was made along the way; a TTL as a duration string works.
	if _, body := g.do("GET", "/v1/kvm/buckets", adminToken, nil); string(body) != "[]\n" {
		t.Fatalf("buckets after bad configs: %s", body)
	}
	resp, body = g.do("POST", "/v1/kvm/buckets/b", adminToken, strings.NewReader(`{"ttl":"90s"}`))
	if resp.StatusCode != 201 || !strings.Contains(string(body), `"ttl":90000000000`) {
		t.Fatalf("ttl as a duration: %d %s", resp.StatusCode, body)
	}
}

func TestKVValueOverMaxValueSizeIs413(t *testing.T) {
	t.Parallel()
	g := startKV(t, `{"max_value_size":16}`)
	resp, body := g.do("PUT", "/v1/kv/cfg/k", adminToken, strings.NewReader(strings.Repeat("x", 17)))
	wantProblem(t, resp, body, 413, "max_value_size")
	resp, body = g.do("POST", "/v1/kv/cfg/k", adminToken, strings.NewReader(strings.Repeat("x", 17)))
	wantProblem(t, resp, body, 413, "max_value_size")
	resp, body = g.do("GET", "/v1/kv/cfg/k", adminToken, nil)
	wantKind(t, resp, body, 404, "no-key")
	g.mustPut("/v1/kv/cfg/k", strings.Repeat("x", 16))
	// Over the server's max_payload: refused before NATS.
	big := strings.Repeat("x", int(g.native(adminToken).MaxPayload())+1)
	resp, body = g.do("PUT", "/v1/kv/cfg/k", adminToken, strings.NewReader(big))
	wantProblem(t, resp, body, 413, "max_payload")
}

func TestKVBadNamesAre400BadKey(t *testing.T) {
	t.Parallel()
	g := startKV(t, "")
	for _, path := range []string{
		"/v1/kv/a.b/k", "/v1/kv/a%20b/k", "/v1/kv/" + strings.Repeat("b", 253) + "/k",
		"/v1/kv/cfg/a..b", "/v1/kv/cfg/.a", "/v1/kv/cfg/a.", "/v1/kv/cfg/a%20b", "/v1/kv/cfg/%C3%BC", "/v1/kv/cfg/a*",
		"/v1/kv/cfg/a%3Eb", "/v1/kv/cfg/" + strings.Repeat("k", 1025),
	} {
		for _, m := range []string{"GET", "PUT", "POST", "DELETE"} {
			resp, body := g.do(m, path, adminToken, strings.NewReader("v"))
			wantKind(t, resp, body, 400, "bad-key")
		}
	}
	for _, path := range []string{"/v1/kvm/buckets/a.b", "/v1/kvm/buckets/a%2Fb"} {
		for _, m := range []string{"GET", "POST", "DELETE"} {
			resp, body := g.do(m, path, adminToken, nil)
			wantKind(t, resp, body, 400, "bad-key")
		}
	}
	// Every character NATS allows in a key, and '/' escaped or raw (which
	// OpenAPI's one-segment path parameters cannot describe, so the raw
	// read goes around the validating client).
	g.mustPut("/v1/kv/cfg/A-z_0=9.x%2Fy", "slash")
	if resp, body := g.do("GET", "/v1/kv/cfg/A-z_0=9.x%2Fy", adminToken, nil); resp.StatusCode != 200 || string(body) != "slash" ||
		resp.Header.Get("X-Nats-Kv-Key") != "A-z_0=9.x/y" {
		t.Fatalf("a key with '/': %d %q", resp.StatusCode, body)
	}
	req, _ := http.NewRequest("GET", g.URL+"/v1/kv/cfg/A-z_0=9.x/y", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(raw) != "slash" {
		t.Fatalf("a key with a raw '/': %d %q", resp.StatusCode, raw)
	}
	if e, err := nativeKV(t, g, "cfg").Get(context.Background(), "A-z_0=9.x/y"); err != nil || string(e.Value()) != "slash" {
		t.Fatalf("native: %v", err)
	}
}

func TestKVWithoutPermissionIs403Quickly(t *testing.T) {
	t.Parallel()
	g := startKV(t, "")
	if resp, body := g.do("POST", "/v1/kvm/buckets/other", adminToken, nil); resp.StatusCode != 201 {
		t.Fatalf("create other: %d %s", resp.StatusCode, body)
	}
	g.mustPut("/v1/kv/other/k", "secret")
	// The kv token may use cfg...
	resp, body := g.do("PUT", "/v1/kv/cfg/k", kvToken, strings.NewReader("mine"))
	if resp.StatusCode != 200 {
		t.Fatalf("kv token on cfg: %d %s", resp.StatusCode, body)
	}
	if resp, body := g.do("GET", "/v1/kv/cfg/k", kvToken, nil); resp.StatusCode != 200 || string(body) != "mine" {
		t.Fatalf("kv token reads cfg: %d %q", resp.StatusCode, body)
	}
	cases := []struct {
		token, method, path string
	}{
		// ...but not write other buckets ($KV.other.> refused)...
		{kvToken, "PUT", "/v1/kv/other/k"},
		{kvToken, "POST", "/v1/kv/other/new"},
		{kvToken, "DELETE", "/v1/kv/other/k"},
		{kvToken, "DELETE", "/v1/kv/other/k?purge=true"},
		// ...and the orders token no JetStream API at all.
		{ordersToken, "GET", "/v1/kv/cfg/k"},
		{ordersToken, "PUT", "/v1/kv/cfg/k"},
		{ordersToken, "GET", "/v1/kvm/buckets"},
		{ordersToken, "GET", "/v1/kvm/buckets/cfg"},
		{ordersToken, "POST", "/v1/kvm/buckets/mine"},
		{ordersToken, "DELETE", "/v1/kvm/buckets/cfg"},
		{ordersToken, "GET", "/v1/kvm/buckets/cfg/keys"},
	}
	for _, tc := range cases {
		value := "stolen"
		if strings.HasPrefix(tc.path, "/v1/kvm/") {
			value = "" // a bucket config; this one is all defaults
		}
		start := time.Now()
		resp, body := g.do(tc.method, tc.path, tc.token, strings.NewReader(value))
		wantKind(t, resp, body, 403, "forbidden")
		// The JetStream API's timeout is 5 s: a 403 must not wait for it.
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s %s: 403 after %v", tc.method, tc.path, d)
		}
	}
	if _, body := g.do("GET", "/v1/kv/other/k", adminToken, nil); string(body) != "secret" {
		t.Fatalf("other/k is %q after refused writes", body)
	}
	if _, body := g.do("GET", "/v1/kvm/buckets", adminToken, nil); strings.Contains(string(body), "mine") {
		t.Fatalf("a refused bucket creation made a bucket: %s", body)
	}
}

func TestKVWithoutJetStreamIs503(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	for _, tc := range [][2]string{{"GET", "/v1/kv/cfg/k"}, {"PUT", "/v1/kv/cfg/k"}, {"GET", "/v1/kvm/buckets"}, {"POST", "/v1/kvm/buckets/cfg"}} {
		resp, body := g.do(tc[0], tc[1], adminToken, nil)
		wantKind(t, resp, body, 503, "jetstream-unavailable")
	}
}

func TestKVBucketDeletedElsewhereIsNoBucketThenUsableWhenRecreated(t *testing.T) {
	t.Parallel()
	g := startKV(t, "")
	g.mustPut("/v1/kv/cfg/k", "v") // the gateway now holds the bucket's handle
	js, _ := jetstream.New(g.native(adminToken))
	if err := js.DeleteKeyValue(context.Background(), "cfg"); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"GET", "PUT", "DELETE"} {
		resp, body := g.do(m, "/v1/kv/cfg/k", adminToken, strings.NewReader("v"))
		wantKind(t, resp, body, 404, "no-bucket")
	}
	resp, body := g.do("GET", "/v1/kvm/buckets/cfg/keys", adminToken, nil)
	wantKind(t, resp, body, 404, "no-bucket")
	if _, err := js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "cfg", History: 3}); err != nil {
		t.Fatal(err)
	}
	if rev := g.mustPut("/v1/kv/cfg/k", "again"); rev != 1 {
		t.Fatalf("revision in the new bucket %d, want 1", rev)
	}
}

func TestKVMetricsCountOperationsByKindAndStatus(t *testing.T) {
	t.Parallel()
	g := startKV(t, "")
	g.mustPut("/v1/kv/cfg/a", "v")
	g.mustPut("/v1/kv/cfg/a", "w", "If-Match", `"1"`)
	g.do("PUT", "/v1/kv/cfg/a", adminToken, strings.NewReader("x"), "If-Match", `"1"`)
	g.do("GET", "/v1/kv/cfg/a", adminToken, nil)
	g.do("GET", "/v1/kv/cfg/none", adminToken, nil)
	g.do("GET", "/v1/kv/cfg/none", adminToken, nil)
	g.do("DELETE", "/v1/kv/cfg/a?purge=true", adminToken, nil)
	g.do("GET", "/v1/kvm/buckets/cfg/keys", adminToken, nil)
	for series, want := range map[string]float64{
		`natsgate_kv_operations_total{op="bucket_create",status="201"}`: 1,
		`natsgate_kv_operations_total{op="put",status="200"}`:           1,
		`natsgate_kv_operations_total{op="update",status="200"}`:        1,
		`natsgate_kv_operations_total{op="update",status="412"}`:        1,
		`natsgate_kv_operations_total{op="get",status="200"}`:           1,
		`natsgate_kv_operations_total{op="get",status="404"}`:           2,
		`natsgate_kv_operations_total{op="purge",status="204"}`:         1,
		`natsgate_kv_operations_total{op="keys",status="200"}`:          1,
	} {
		if got := metricValue(t, g, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
}

// TestKVKeysStreamsALargeBucket lists 20 MB of keys to a client that
// reads the first KiB and waits: the gateway must have sent it before
// it had every key, its listing consumer still holding keys back. Read
// in full the answer is the JSON array of every key, once each. A client
// that leaves early leaves nothing behind.
func TestKVKeysStreamsALargeBucket(t *testing.T) {
	t.Parallel()
	g := startKV(t, "")
	js := g.jsAdmin()
	const n = 20000
	pad := strings.Repeat("x", 990)
	key := func(i int) string { return fmt.Sprintf("k%05d.%s", i, pad) }
	for from := 1; from <= n; from += 1000 { // at most 1000 acknowledgements outstanding
		storeOn(t, js, func(i int) string { return "$KV.cfg." + key(i) }, from, from+999, 0)
	}
	st := g.kvStream("cfg")
	client := smallReadBuffer(t)
	get := func() (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest("GET", g.URL+"/v1/kvm/buckets/cfg/keys", nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		first := make([]byte, 1024)
		if _, err := io.ReadFull(resp.Body, first); err != nil {
			t.Fatal(err)
		}
		return resp, first
	}
	pending := func() (n uint64) {
		l := st.ListConsumers(context.Background())
		for ci := range l.Info() {
			n += ci.NumPending
		}
		if err := l.Err(); err != nil {
			t.Fatal(err)
		}
		return n
	}

	resp, first := get()
	time.Sleep(200 * time.Millisecond) // the gateway, blocked writing, stops taking keys
	if p := pending(); p == 0 {
		t.Fatal("the first bytes came once the gateway had every key")
	}
	var keys []string
	if err := json.NewDecoder(io.MultiReader(bytes.NewReader(first), resp.Body)).Decode(&keys); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	seen := make(map[string]bool, n)
	for _, k := range keys {
		if seen[k] || !strings.HasSuffix(k, pad) {
			t.Fatalf("key %.20q… twice or not stored", k)
		}
		seen[k] = true
	}
	if len(seen) != n {
		t.Fatalf("%d keys, want %d", len(seen), n)
	}

	resp, _ = get()
	resp.Body.Close()
	waitNoConsumers(t, st)
}
