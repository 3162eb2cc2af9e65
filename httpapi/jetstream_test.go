package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/natsgate/natsgate/bridge"
)

// streamInfo is the part of nats-server's stream info the tests read.
type streamInfo struct {
	Config struct {
		Name     string   `json:"name"`
		Subjects []string `json:"subjects"`
		MaxMsgs  int64    `json:"max_msgs"`
	} `json:"config"`
	State struct {
		Messages uint64 `json:"messages"`
		LastSeq  uint64 `json:"last_seq"`
	} `json:"state"`
	Created string `json:"created"`
}

func decodeJSON[T any](t testing.TB, body []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("body %s: %v", body, err)
	}
	return v
}

// putStream creates a stream through the API and fails unless it was created.
func (g *gateway) putStream(name, config string) streamInfo {
	g.t.Helper()
	resp, body := g.do("PUT", "/v1/streams/"+name, adminToken, strings.NewReader(config))
	if resp.StatusCode != http.StatusCreated {
		g.t.Fatalf("PUT stream %s: %d %s", name, resp.StatusCode, body)
	}
	return decodeJSON[streamInfo](g.t, body)
}

// streamState reads a stream's info through the API.
func (g *gateway) streamState(name string) streamInfo {
	g.t.Helper()
	resp, body := g.do("GET", "/v1/streams/"+name, adminToken, nil)
	if resp.StatusCode != http.StatusOK {
		g.t.Fatalf("GET stream %s: %d %s", name, resp.StatusCode, body)
	}
	return decodeJSON[streamInfo](g.t, body)
}

// jsPublish stores one message and returns the status and body.
func (g *gateway) jsPublish(token, subject, data string, hdr ...string) (*http.Response, []byte) {
	g.t.Helper()
	return g.do("POST", "/v1/js/publish/"+subject, token, strings.NewReader(data), hdr...)
}

// wantAck checks a 200 acknowledgement, exactly as the contract has it.
func wantAck(t testing.TB, resp *http.Response, body []byte, stream string, seq uint64, dup bool) {
	t.Helper()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200; body %s", resp.StatusCode, body)
	}
	want := fmt.Sprintf(`{"stream":%q,"seq":%d,"duplicate":%t}`, stream, seq, dup)
	if got := strings.TrimSpace(string(body)); got != want {
		t.Fatalf("ack %s, want %s", got, want)
	}
}

func TestStreamCreateUpdateGetListDelete(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream)
	created := g.putStream("ORDERS", `{"subjects":["orders.>"],"storage":"file","max_msgs":100}`)
	if created.Config.Name != "ORDERS" || !slices.Equal(created.Config.Subjects, []string{"orders.>"}) || created.Config.MaxMsgs != 100 || created.Created == "" {
		t.Fatalf("created stream info %+v", created)
	}
	// The same PUT again is an update of an existing stream, and so is a
	// changed configuration (a body naming the stream as the path does).
	for _, cfg := range []string{`{"subjects":["orders.>"],"storage":"file","max_msgs":100}`, `{"name":"ORDERS","subjects":["orders.>"],"max_msgs":7}`} {
		resp, body := g.do("PUT", "/v1/streams/ORDERS", adminToken, strings.NewReader(cfg))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("update: %d %s, want 200", resp.StatusCode, body)
		}
	}
	got := g.streamState("ORDERS")
	if got.Config.MaxMsgs != 7 || got.Created != created.Created {
		t.Fatalf("after update: %+v (created %s)", got, created.Created)
	}
	// nats-server's own field names, passed through: no envelope.
	_, body := g.do("GET", "/v1/streams/ORDERS", adminToken, nil)
	raw := decodeJSON[map[string]json.RawMessage](t, body)
	for _, k := range []string{"config", "state", "created", "ts"} {
		if raw[k] == nil {
			t.Errorf("stream info has no %q: %s", k, body)
		}
	}
	for _, k := range []string{"type", "total", "did_create"} {
		if raw[k] != nil {
			t.Errorf("stream info has the API envelope's %q: %s", k, body)
		}
	}

	g.putStream("AUDIT", `{"subjects":["audit.>"]}`)
	resp, body := g.do("GET", "/v1/streams", adminToken, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("list: %d %s", resp.StatusCode, body)
	}
	names := decodeJSON[[]string](t, body)
	slices.Sort(names)
	if !slices.Equal(names, []string{"AUDIT", "ORDERS"}) {
		t.Fatalf("stream names %v", names)
	}

	if resp, body := g.do("DELETE", "/v1/streams/ORDERS", adminToken, nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("delete: %d %s", resp.StatusCode, body)
	}
	resp, body = g.do("GET", "/v1/streams/ORDERS", adminToken, nil)
	wantProblem(t, resp, body, http.StatusNotFound, "stream not found")
	if !strings.Contains(string(body), "urn:natsgate:problem:no-stream") {
		t.Fatalf("kind: %s", body)
	}
	resp, body = g.do("DELETE", "/v1/streams/ORDERS", adminToken, nil)
	wantProblem(t, resp, body, http.StatusNotFound, "stream not found")
	_, body = g.do("GET", "/v1/streams", adminToken, nil)
	if names := decodeJSON[[]string](t, body); !slices.Equal(names, []string{"AUDIT"}) {
		t.Fatalf("after delete: %v", names)
	}
	g.do("DELETE", "/v1/streams/AUDIT", adminToken, nil)
	if _, body = g.do("GET", "/v1/streams", adminToken, nil); strings.TrimSpace(string(body)) != "[]" {
		t.Fatalf("no streams: %s, want []", body)
	}
}

func TestStreamConfigsRefusedAre400(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream)
	cases := []struct {
		name, path, body, detail string
	}{
		{"name differs", "/v1/streams/ORDERS", `{"name":"OTHER","subjects":["orders.>"]}`, `"OTHER"`},
		{"unknown field", "/v1/streams/ORDERS", `{"subjectz":["orders.>"]}`, `unknown field "subjectz"`},
		{"not an object", "/v1/streams/ORDERS", `["orders.>"]`, "JSON object"},
		{"not JSON", "/v1/streams/ORDERS", `subjects: orders.>`, "JSON object"},
		// nats-server answers this one with its code 500 (err_code 10052).
		{"server refuses", "/v1/streams/ORDERS", `{"subjects":["orders.>"],"discard":"new","discard_new_per_subject":true}`,
			"discard new per subject requires max msgs per subject > 0"},
		{"dot in name", "/v1/streams/a.b", `{}`, "stream name"},
		{"wildcard in name", "/v1/streams/a*", `{}`, "stream name"},
		{"escaped slash in name", "/v1/streams/a%2Fb", `{}`, "stream name"},
		{"space in name", "/v1/streams/a%20b", `{}`, "stream name"},
		{"name too long", "/v1/streams/" + strings.Repeat("N", 256), `{}`, "longer than 255"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := g.do("PUT", tc.path, adminToken, strings.NewReader(tc.body))
			wantProblem(t, resp, body, http.StatusBadRequest, tc.detail)
		})
	}
	for _, path := range []string{"/v1/streams/a.b", "/v1/streams/a%3Eb"} {
		resp, body := g.do("GET", path, adminToken, nil)
		wantProblem(t, resp, body, http.StatusBadRequest, "stream name")
		resp, body = g.do("DELETE", path, adminToken, nil)
		wantProblem(t, resp, body, http.StatusBadRequest, "stream name")
	}
	// None of them made a stream.
	if _, body := g.do("GET", "/v1/streams", adminToken, nil); strings.TrimSpace(string(body)) != "[]" {
		t.Fatalf("streams after refused configs: %s", body)
	}
}

func TestStoredPublishAnswersTheStreamsAck(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream)
	g.putStream("ORDERS", `{"subjects":["orders.>"]}`)
	resp, body := g.jsPublish(adminToken, "orders.eu", "first", "NatsH-Trace", "42")
	wantAck(t, resp, body, "ORDERS", 1, false)
	resp, body = g.jsPublish(ordersToken, "orders.us", "second") // no rights on $JS.API needed
	wantAck(t, resp, body, "ORDERS", 2, false)
	if st := g.streamState("ORDERS").State; st.Messages != 2 || st.LastSeq != 2 {
		t.Fatalf("stream state %+v, want 2 messages", st)
	}
	// The stored message is the payload with its NATS headers.
	nc := g.native(adminToken)
	reply, err := nc.Request("$JS.API.STREAM.MSG.GET.ORDERS", []byte(`{"seq":1}`), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Message struct {
			Subject string `json:"subject"`
			Data    []byte `json:"data"`
			Hdrs    []byte `json:"hdrs"`
		} `json:"message"`
	}
	if err := json.Unmarshal(reply.Data, &got); err != nil {
		t.Fatalf("%s: %v", reply.Data, err)
	}
	if got.Message.Subject != "orders.eu" || string(got.Message.Data) != "first" || !strings.Contains(string(got.Message.Hdrs), "Trace: 42") {
		t.Fatalf("stored message %+v (headers %q)", got.Message, got.Message.Hdrs)
	}

	// Over max_payload: 413, nothing stored.
	resp, body = g.jsPublish(adminToken, "orders.eu", strings.Repeat("x", 1<<20+1))
	wantProblem(t, resp, body, http.StatusRequestEntityTooLarge, "")
	// A reply subject makes no sense for a stored publish.
	resp, body = g.do("POST", "/v1/js/publish/orders.eu?reply=r", adminToken, strings.NewReader("x"))
	wantProblem(t, resp, body, http.StatusBadRequest, "reply")
	if st := g.streamState("ORDERS").State; st.Messages != 2 {
		t.Fatalf("refused publishes were stored: %+v", st)
	}
}

func TestStoredPublishIdempotencyKeyStoresOnce(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream)
	g.putStream("ORDERS", `{"subjects":["orders.>"],"duplicate_window":60000000000}`)
	resp, body := g.jsPublish(adminToken, "orders.eu", "pay 10", "Idempotency-Key", "order-17")
	wantAck(t, resp, body, "ORDERS", 1, false)
	for range 3 {
		resp, body = g.jsPublish(adminToken, "orders.eu", "pay 10", "Idempotency-Key", "order-17")
		wantAck(t, resp, body, "ORDERS", 1, true)
	}
	// The key is the NATS message id: the same id as a header is the same message.
	resp, body = g.jsPublish(adminToken, "orders.eu", "pay 10", "NatsH-Nats-Msg-Id", "order-17")
	wantAck(t, resp, body, "ORDERS", 1, true)
	resp, body = g.jsPublish(adminToken, "orders.eu", "pay 12", "Idempotency-Key", "order-18")
	wantAck(t, resp, body, "ORDERS", 2, false)
	if st := g.streamState("ORDERS").State; st.Messages != 2 {
		t.Fatalf("stream holds %d messages, want 2: a duplicate was stored", st.Messages)
	}
	resp, body = g.jsPublish(adminToken, "orders.eu", "x", "Idempotency-Key", "a", "NatsH-Nats-Msg-Id", "b")
	wantProblem(t, resp, body, http.StatusBadRequest, "two different message ids")
}

func TestStoredPublishFailedExpectationIs409(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream)
	g.putStream("ORDERS", `{"subjects":["orders.>"]}`)
	resp, body := g.jsPublish(adminToken, "orders.eu", "one", "Idempotency-Key", "m1")
	wantAck(t, resp, body, "ORDERS", 1, false)
	resp, body = g.jsPublish(adminToken, "orders.us", "two")
	wantAck(t, resp, body, "ORDERS", 2, false)

	conflicts := []struct {
		header, value, detail string
	}{
		{"NatsH-Nats-Expected-Last-Sequence", "1", "wrong last sequence: 2"},
		{"NatsH-Nats-Expected-Last-Subject-Sequence", "2", "wrong last sequence: 1"},
		{"NatsH-Nats-Expected-Last-Msg-Id", "m1", "wrong last msg ID"},
		{"NatsH-Nats-Expected-Stream", "OTHER", "expected stream does not match"},
	}
	for _, c := range conflicts {
		resp, body := g.jsPublish(adminToken, "orders.eu", "late", c.header, c.value)
		wantProblem(t, resp, body, http.StatusConflict, c.detail)
		if !strings.Contains(string(body), "urn:natsgate:problem:conflict") {
			t.Fatalf("%s: kind %s", c.header, body)
		}
	}
	if st := g.streamState("ORDERS").State; st.Messages != 2 {
		t.Fatalf("a publish with a failed expectation was stored: %+v", st)
	}
	// Met expectations store.
	resp, body = g.jsPublish(adminToken, "orders.eu", "three", "NatsH-Nats-Expected-Last-Sequence", "2",
		"NatsH-Nats-Expected-Last-Subject-Sequence", "1", "NatsH-Nats-Expected-Stream", "ORDERS")
	wantAck(t, resp, body, "ORDERS", 3, false)
}

func TestStoredPublishWithoutStreamIs404(t *testing.T) {
	t.Parallel()
	for _, external := range []bool{false, true} {
		t.Run(fmt.Sprintf("external=%t", external), func(t *testing.T) {
			g := startGateway(t, withJetStream, func(o *gatewayOptions) { o.external = external })
			g.putStream("ORDERS", `{"subjects":["orders.eu.>"]}`)
			for _, token := range []string{adminToken, ordersToken} { // orders may not ask $JS.API whether there is JetStream
				resp, body := g.jsPublish(token, "orders.us", "lost")
				wantProblem(t, resp, body, http.StatusNotFound, `no stream holds subject "orders.us"`)
				if !strings.Contains(string(body), "urn:natsgate:problem:no-stream") {
					t.Fatalf("kind: %s", body)
				}
			}
		})
	}
}

func TestJetStreamRoutesWithoutJetStreamAre503(t *testing.T) {
	t.Parallel()
	for _, external := range []bool{false, true} {
		t.Run(fmt.Sprintf("external=%t", external), func(t *testing.T) {
			// A long confirm timeout: an answer well within it is not one.
			g := startGateway(t, func(o *gatewayOptions) {
				o.external = external
				o.pool.ConfirmTimeout = 20 * time.Second
			})
			batch := "{\"subject\":\"orders.a\",\"data\":\"1\"}\n{\"subject\":\"orders.b\",\"msg_id\":\"x\"}\n"
			for _, r := range []struct{ method, path, body, ct string }{
				{"PUT", "/v1/streams/ORDERS", `{"subjects":["orders.>"]}`, ""},
				{"GET", "/v1/streams", "", ""},
				{"GET", "/v1/streams/ORDERS", "", ""},
				{"DELETE", "/v1/streams/ORDERS", "", ""},
				{"POST", "/v1/js/publish/orders.eu", "x", ""},
				{"POST", "/v1/js/publish", batch, "application/x-ndjson"},
			} {
				start := time.Now()
				var hdr []string
				if r.ct != "" {
					hdr = []string{"Content-Type", r.ct}
				}
				resp, body := g.do(r.method, r.path, adminToken, strings.NewReader(r.body), hdr...)
				wantProblem(t, resp, body, http.StatusServiceUnavailable, "JetStream")
				if !strings.Contains(string(body), "urn:natsgate:problem:jetstream-unavailable") {
					t.Fatalf("%s %s: kind %s", r.method, r.path, body)
				}
				if d := time.Since(start); d > 5*time.Second {
					t.Fatalf("%s %s took %v: a timeout, not an answer", r.method, r.path, d)
				}
			}
		})
	}
}

func TestJetStreamForbiddenIsQuick403(t *testing.T) {
	t.Parallel()
	tokens := append(testTokens(), bridge.Token{Name: "noinbox", Token: "noinbox-Tok3n",
		Publish:   &bridge.SubjectPermission{Allow: []string{"orders.>"}},
		Subscribe: &bridge.SubjectPermission{Allow: []string{"orders.>"}}})
	g := startGateway(t, withJetStream, func(o *gatewayOptions) {
		o.tokens = tokens
		o.pool.ConfirmTimeout = 20 * time.Second // a 403 well within it is not a timeout
	})
	g.putStream("ORDERS", `{"subjects":["orders.>"]}`)
	g.putStream("OTHER", `{"subjects":["other.>"]}`)
	batch := "{\"subject\":\"orders.a\",\"data\":\"1\"}\n{\"subject\":\"other.a\",\"data\":\"2\"}\n{\"subject\":\"orders.b\",\"data\":\"3\"}\n"
	cases := []struct {
		name, token, method, path, body, detail string
	}{
		{"no $JS.API: create", ordersToken, "PUT", "/v1/streams/MINE", `{"subjects":["orders.mine"]}`, "$JS.API.STREAM"},
		{"no $JS.API: list", ordersToken, "GET", "/v1/streams", "", "$JS.API.STREAM.NAMES"},
		{"no $JS.API: info", ordersToken, "GET", "/v1/streams/ORDERS", "", "$JS.API.STREAM.INFO.ORDERS"},
		{"no $JS.API: delete", ordersToken, "DELETE", "/v1/streams/ORDERS", "", "$JS.API.STREAM.DELETE.ORDERS"},
		{"subject", ordersToken, "POST", "/v1/js/publish/other.x", "x", `publish to "other.x"`},
		{"no inbox", "noinbox-Tok3n", "POST", "/v1/js/publish/orders.x", "x", "_INBOX.>"},
	}
	for _, tc := range cases {
		start := time.Now()
		resp, body := g.do(tc.method, tc.path, tc.token, strings.NewReader(tc.body))
		wantProblem(t, resp, body, http.StatusForbidden, tc.detail)
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("%s: 403 after %v, a timeout", tc.name, d)
		}
	}
	// In a batch, the forbidden entry is 403 and the others are stored.
	start := time.Now()
	resp, body := g.do("POST", "/v1/js/publish", ordersToken, strings.NewReader(batch), "Content-Type", "application/x-ndjson")
	if resp.StatusCode != http.StatusMultiStatus || time.Since(start) > 5*time.Second {
		t.Fatalf("batch: %d after %v: %s", resp.StatusCode, time.Since(start), body)
	}
	res := decodeJSON[storedResults](t, body).Results
	if len(res) != 3 || res[0].Status != 200 || res[1].Status != 403 || res[2].Status != 200 || res[0].Seq != 1 || res[2].Seq != 2 {
		t.Fatalf("results %s", body)
	}
	if st := g.streamState("ORDERS").State; st.Messages != 2 {
		t.Fatalf("ORDERS holds %d, want 2", st.Messages)
	}
	if st := g.streamState("OTHER").State; st.Messages != 0 {
		t.Fatalf("the forbidden entry was stored: %+v", st)
	}
}

type storedResults struct {
	Results []struct {
		Index     int    `json:"index"`
		Status    int    `json:"status"`
		Stream    string `json:"stream"`
		Seq       uint64 `json:"seq"`
		Duplicate *bool  `json:"duplicate"`
		Detail    string `json:"detail"`
	} `json:"results"`
}

func TestStoredBatchAllStoredIs200(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream)
	g.putStream("ORDERS", `{"subjects":["orders.>"]}`)
	var b strings.Builder
	for i := range 50 {
		fmt.Fprintf(&b, `{"subject":"orders.%d","data":"m%d","headers":{"Trace":"%d"}}`+"\n", i%3, i, i)
	}
	resp, body := g.do("POST", "/v1/js/publish", adminToken, strings.NewReader(b.String()), "Content-Type", "application/x-ndjson")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("batch: %d %s", resp.StatusCode, body)
	}
	res := decodeJSON[storedResults](t, body).Results
	for i, r := range res {
		// Stored in order: entry i is sequence i+1.
		if r.Index != i || r.Status != 200 || r.Stream != "ORDERS" || r.Seq != uint64(i+1) || r.Duplicate == nil || *r.Duplicate || r.Detail != "" {
			t.Fatalf("result %d: %+v", i, r)
		}
	}
	if len(res) != 50 || g.streamState("ORDERS").State.Messages != 50 {
		t.Fatalf("%d results, want 50", len(res))
	}
}

func TestStoredBatchMixedIs207(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream)
	g.putStream("ORDERS", `{"subjects":["orders.>"]}`)
	lines := []string{
		`{"subject":"orders.a","data":"1","msg_id":"k1"}`,                                 // 200, seq 1
		`{"subject":"orders.b","data_base64":"AAE="}`,                                     // 200, seq 2
		`{"subject":"nostream.x","data":"3"}`,                                             // 404
		`{not json`,                                                                       // 400
		`{"subject":"orders.c","data":"5","msg_id":"k1"}`,                                 // 200, duplicate of seq 1
		`{"subject":"orders.d","headers":{"Nats-Expected-Last-Sequence":"1"}}`,            // 409: the last is 2
		`{"subject":"orders.e","reply":"r"}`,                                              // 400
		`{"subject":"bad..subject"}`,                                                      // 400
		`{"subject":"orders.f","data":"9","headers":{"Nats-Expected-Last-Sequence":"2"}}`, // 200, seq 3
	}
	resp, body := g.do("POST", "/v1/js/publish", adminToken, strings.NewReader(strings.Join(lines, "\n")+"\n"), "Content-Type", "application/x-ndjson")
	if resp.StatusCode != http.StatusMultiStatus {
		t.Fatalf("batch: %d %s", resp.StatusCode, body)
	}
	res := decodeJSON[storedResults](t, body).Results
	want := []struct {
		status int
		seq    uint64
		dup    bool
		detail string
	}{
		{200, 1, false, ""}, {200, 2, false, ""}, {404, 0, false, `no stream holds subject "nostream.x"`}, {400, 0, false, "not a JSON object"},
		{200, 1, true, ""}, {409, 0, false, "wrong last sequence: 2"}, {400, 0, false, "reply"}, {400, 0, false, "empty token"},
		{200, 3, false, ""},
	}
	if len(res) != len(want) {
		t.Fatalf("%d results, want %d: %s", len(res), len(want), body)
	}
	for i, w := range want {
		r := res[i]
		switch {
		case r.Index != i || r.Status != w.status || r.Seq != w.seq || !strings.Contains(r.Detail, w.detail):
			t.Errorf("result %d: %+v, want %+v", i, r, w)
		case w.status == 200 && (r.Stream != "ORDERS" || r.Duplicate == nil || *r.Duplicate != w.dup || r.Detail != ""):
			t.Errorf("result %d: %+v, want an ack", i, r)
		case w.status != 200 && (r.Stream != "" || r.Duplicate != nil || r.Detail == ""):
			t.Errorf("result %d: %+v, want a status and a detail only", i, r)
		}
	}
	if st := g.streamState("ORDERS").State; st.Messages != 3 {
		t.Fatalf("ORDERS holds %d messages, want 3", st.Messages)
	}
}

func TestStoredBatchIsPipelinedWithinItsBound(t *testing.T) {
	t.Parallel()
	const window, n = 16, 200
	g := startGateway(t, withJetStream, func(o *gatewayOptions) { o.pool.StoredInFlight = window })
	g.putStream("ORDERS", `{"subjects":["orders.>"]}`)
	// One native connection sees, in the server's order, each message as
	// the gateway publishes it and each acknowledgement as the stream
	// sends it. One at a time, the two would alternate; pipelined, many
	// messages are out before their acknowledgements, never more than
	// the window: the gateway sends message k+window only once it has
	// ack k, which the server queued to this observer first.
	// One subscription to everything keeps the server's order.
	nc := g.native(adminToken)
	all, err := nc.SubscribeSync(">")
	if err == nil {
		_ = all.SetPendingLimits(-1, -1)
		err = nc.Flush()
	}
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `{"subject":"orders.%d","data":"m"}`+"\n", i)
	}
	resp, body := g.do("POST", "/v1/js/publish", adminToken, strings.NewReader(b.String()), "Content-Type", "application/x-ndjson")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("batch: %d %s", resp.StatusCode, body)
	}
	outstanding, most, msgs, acked := 0, 0, 0, 0
	for acked < n {
		m, err := all.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("saw %d messages and %d acks of %d: %v", msgs, acked, n, err)
		}
		switch {
		case strings.HasPrefix(m.Subject, "orders."):
			msgs++
			outstanding++
			most = max(most, outstanding)
		case strings.HasPrefix(m.Subject, "_INBOX."):
			acked++
			outstanding--
		}
	}
	t.Logf("at most %d of %d messages awaited their acknowledgement at once (window %d)", most, n, window)
	if most < window/2 {
		t.Fatalf("at most %d messages were in flight at once: not pipelined (window %d)", most, window)
	}
	if most > window {
		t.Fatalf("%d messages were in flight at once, over the window of %d", most, window)
	}
}

func TestConcurrentStoredPublishesShareOneAckInbox(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream)
	g.putStream("ORDERS", `{"subjects":["orders.>"]}`)
	const workers, each = 16, 10
	seqs := make(chan uint64, workers*each)
	errs := make(chan string, workers*each)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				req, _ := http.NewRequest("POST", fmt.Sprintf("%s/v1/js/publish/orders.%d", g.URL, w), strings.NewReader(fmt.Sprint(i)))
				req.Header.Set("Authorization", "Bearer "+ordersToken)
				resp, err := g.client.Do(req)
				if err != nil {
					errs <- err.Error()
					return
				}
				var ack bridge.PubAck
				err = json.NewDecoder(resp.Body).Decode(&ack)
				resp.Body.Close()
				if resp.StatusCode != 200 || err != nil {
					errs <- fmt.Sprintf("status %d: %v", resp.StatusCode, err)
					return
				}
				seqs <- ack.Seq
			}
		})
	}
	wg.Wait()
	close(seqs)
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	seen := map[uint64]bool{}
	for s := range seqs {
		if seen[s] || s < 1 || s > workers*each {
			t.Fatalf("sequence %d acknowledged twice or out of range", s)
		}
		seen[s] = true
	}
	if len(seen) != workers*each || g.streamState("ORDERS").State.Messages != workers*each {
		t.Fatalf("%d acknowledgements, want %d", len(seen), workers*each)
	}
}

func TestStreamMaxMsgSizeIs413(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream)
	g.putStream("SMALL", `{"subjects":["small.>"],"max_msg_size":8}`)
	resp, body := g.jsPublish(adminToken, "small.x", "more than eight bytes")
	wantProblem(t, resp, body, http.StatusRequestEntityTooLarge, "message size exceeds maximum allowed")
	resp, body = g.jsPublish(adminToken, "small.x", "tiny")
	wantAck(t, resp, body, "SMALL", 1, false)
}

func TestJetStreamMetricsCountOutcomes(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream)
	g.putStream("ORDERS", `{"subjects":["orders.>"]}`)                                            // put 201
	g.do("PUT", "/v1/streams/ORDERS", adminToken, strings.NewReader(`{"subjects":["orders.>"]}`)) // put 200
	g.do("PUT", "/v1/streams/BAD", adminToken, strings.NewReader(`{"nope":1}`))                   // put 400
	g.do("GET", "/v1/streams", adminToken, nil)                                                   // list 200
	g.do("GET", "/v1/streams/NONE", adminToken, nil)                                              // get 404
	g.do("DELETE", "/v1/streams/NONE", ordersToken, nil)                                          // delete 403
	g.jsPublish(adminToken, "orders.a", "1")                                                      // 200
	g.jsPublish(adminToken, "nostream", "2")                                                      // 404
	g.jsPublish(adminToken, "orders.b", "3", "NatsH-Nats-Expected-Last-Sequence", "9")            // 409
	batch := "{\"subject\":\"orders.c\"}\n{\"subject\":\"orders.d\"}\n{\"subject\":\"nostream\"}\n"
	g.do("POST", "/v1/js/publish", adminToken, strings.NewReader(batch), "Content-Type", "application/x-ndjson") // 200 ×2, 404
	want := map[string]float64{
		`natsgate_stream_operations_total{op="put",status="201"}`:    1,
		`natsgate_stream_operations_total{op="put",status="200"}`:    1,
		`natsgate_stream_operations_total{op="put",status="400"}`:    1,
		`natsgate_stream_operations_total{op="list",status="200"}`:   1,
		`natsgate_stream_operations_total{op="get",status="404"}`:    1,
		`natsgate_stream_operations_total{op="delete",status="403"}`: 1,
		`natsgate_stored_publishes_total{status="200"}`:              3,
		`natsgate_stored_publishes_total{status="404"}`:              2,
		`natsgate_stored_publishes_total{status="409"}`:              1,
	}
	for series, v := range want {
		if got := metricValue(t, g, series); got != v {
			t.Errorf("%s = %v, want %v", series, got, v)
		}
	}
}

// A stream with no_ack stores messages without acknowledging them: the
// gateway cannot say they were stored.
func TestStoredPublishWithoutAckIs504(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream, func(o *gatewayOptions) { o.pool.ConfirmTimeout = 300 * time.Millisecond })
	g.putStream("SILENT", `{"subjects":["silent.>"],"no_ack":true}`)
	resp, body := g.jsPublish(adminToken, "silent.x", "x")
	wantProblem(t, resp, body, http.StatusGatewayTimeout, "did not acknowledge within 300ms")
}

func TestStoredPublishAwaitingItsAckWhenNATSGoesIs503(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream, func(o *gatewayOptions) {
		o.external = true
		o.pool.ConfirmTimeout = 20 * time.Second
	})
	g.putStream("SILENT", `{"subjects":["silent.>"],"no_ack":true}`)
	type answer struct {
		resp *http.Response
		body []byte
		at   time.Time
	}
	done := make(chan answer, 1)
	go func() {
		resp, body := g.jsPublish(adminToken, "silent.x", "x")
		done <- answer{resp, body, time.Now()}
	}()
	waitFor(t, "the message to be stored", func() bool { return g.streamState("SILENT").State.Messages == 1 })
	down := time.Now()
	_ = g.e.Shutdown(context.Background())
	a := <-done
	wantProblem(t, a.resp, a.body, http.StatusServiceUnavailable, "connection was lost before the stream acknowledged")
	if d := a.at.Sub(down); d > 5*time.Second {
		t.Fatalf("answered %v after NATS went: the ack timeout, not the outage", d)
	}
}

func TestCrossOriginStoredPublishMayCarryAnIdempotencyKey(t *testing.T) {
	t.Parallel()
	g := startGateway(t, withJetStream, func(o *gatewayOptions) { o.cfg.AllowedOrigins = []string{"app.example.com"} })
	req, _ := http.NewRequest("OPTIONS", g.URL+"/v1/js/publish/orders.eu", nil)
	req.Header.Set("Origin", "https://app.example.com")
	req.Header.Set("Access-Control-Request-Method", "POST")
	req.Header.Set("Access-Control-Request-Headers", "authorization, idempotency-key, natsh-nats-expected-last-sequence")
	resp, err := g.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent || !strings.Contains(resp.Header.Get("Access-Control-Allow-Headers"), "idempotency-key") {
		t.Fatalf("preflight: %d %v", resp.StatusCode, resp.Header)
	}
}
