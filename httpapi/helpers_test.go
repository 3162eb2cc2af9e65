package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/nats-io/nats.go"

	"github.com/natsgate/natsgate/bridge"

	"github.com/natsgate/natsgate/internal/gatewayproc"
)

// openAPIDoc is ../openapi.yaml, what natsgate.OpenAPI embeds. It is read
// here, not imported: the root package natsgate imports httpapi (it wires
// the gateway for library use), so these tests importing it would be an
// import cycle.
var openAPIDoc = func() []byte {
	b, err := os.ReadFile("../openapi.yaml")
	if err != nil {
		panic(err)
	}
	return b
}()

// Tokens of the test gateways: admin may do anything; orders may publish
// and subscribe under orders.> (and receive replies) only.
const (
	adminToken  = "admin-Tok3n-with-a-recognisable-SECRET"
	ordersToken = "orders-Tok3n-with-a-recognisable-SECRET"
)

func testTokens() []bridge.Token {
	return []bridge.Token{
		{Name: "admin", Token: adminToken},
		{Name: "orders", Token: ordersToken,
			Publish:   &bridge.SubjectPermission{Allow: []string{"orders.>"}},
			Subscribe: &bridge.SubjectPermission{Allow: []string{"orders.>", "_INBOX.>"}}},
	}
}

// gateway is a test gateway: an embedded nats-server (or an external URL),
// a pool, the API under httptest, and an HTTP client whose every response
// is checked against openapi.yaml.
type gateway struct {
	t      testing.TB
	URL    string
	e      *bridge.Embedded
	pool   *bridge.Pool
	api    *Server
	ts     *httptest.Server
	client *http.Client
	logs   *gatewayproc.LogBuffer
}

type gatewayOptions struct {
	cfg       Config
	pool      bridge.Config
	tokens    []bridge.Token
	external  bool // reach the embedded server over TCP, as --nats-url would
	jetstream bool
	storeDir  string               // with jetstream: where streams are kept; empty: a directory of the test's own
	oidc      *bridge.OIDCVerifier // accept OIDC tokens through the callout
}

// withJetStream runs the test gateway's embedded server with JetStream,
// stored in a directory of the test's own.
func withJetStream(o *gatewayOptions) { o.jetstream = true }

func startGateway(t testing.TB, opts ...func(*gatewayOptions)) *gateway {
	t.Helper()
	o := gatewayOptions{tokens: testTokens()}
	o.cfg.OpenAPI = openAPIDoc
	for _, f := range opts {
		f(&o)
	}
	logs := &gatewayproc.LogBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ecfg := bridge.EmbeddedConfig{Listen: "127.0.0.1:0", Tokens: o.tokens, OIDC: o.oidc, Logger: logger}
	if o.jetstream {
		ecfg.JetStream, ecfg.StoreDir = true, o.storeDir
		if ecfg.StoreDir == "" {
			ecfg.StoreDir = t.TempDir()
		}
	}
	e, err := bridge.StartEmbedded(ecfg)
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	o.pool.Logger = logger
	if o.external {
		o.pool.URL = e.ClientURL()
	} else {
		o.pool.Server = e
	}
	pool := bridge.NewPool(o.pool)
	api := NewServer(logger, pool, o.cfg)
	ts := httptest.NewServer(api)
	g := &gateway{t: t, URL: ts.URL, e: e, pool: pool, api: api, ts: ts, logs: logs}
	g.client = &http.Client{Transport: newValidatingTransport(t, ts.URL)}
	t.Cleanup(func() {
		api.Shutdown()
		ts.CloseClientConnections()
		ts.Close()
		_ = pool.Close(context.Background())
		_ = e.Shutdown(context.Background())
	})
	return g
}

// native connects a plain nats.go client to the gateway's NATS server.
func (g *gateway) native(token string) *nats.Conn {
	g.t.Helper()
	nc, err := nats.Connect(g.e.ClientURL(), nats.Token(token))
	if err != nil {
		g.t.Fatalf("native connect: %v", err)
	}
	g.t.Cleanup(nc.Close)
	return nc
}

// nativeSub subscribes a native client (admin token) and makes sure the
// server has the subscription before returning.
func (g *gateway) nativeSub(subject string) *nats.Subscription {
	g.t.Helper()
	nc := g.native(adminToken)
	sub, err := nc.SubscribeSync(subject)
	if err == nil {
		err = nc.Flush()
	}
	if err != nil {
		g.t.Fatalf("native subscribe %s: %v", subject, err)
	}
	return sub
}

// do sends a request with an optional bearer token and returns the
// response with its body read.
func (g *gateway) do(method, path, token string, body io.Reader, hdr ...string) (*http.Response, []byte) {
	g.t.Helper()
	req, err := http.NewRequest(method, g.URL+path, body)
	if err != nil {
		g.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := g.client.Do(req)
	if err != nil {
		g.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		g.t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp, b
}

// wantProblem checks an error response: status, problem+json, and the
// detail containing want.
func wantProblem(t testing.TB, resp *http.Response, body []byte, status int, want string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d; body %s", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type %q, want application/problem+json", ct)
	}
	if !bytes.HasSuffix(body, []byte("\n")) {
		t.Fatalf("problem body %q does not end with a newline", body)
	}
	var p problem
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("problem body %s: %v", body, err)
	}
	if p.Status != status || p.Type == "" || p.Title == "" || !strings.Contains(p.Detail, want) {
		t.Fatalf("problem %+v, want status %d and detail containing %q", p, status, want)
	}
}

// validatingTransport checks every response against openapi.yaml: its
// path, method and status must be documented and its headers and (unless
// streamed) body must match the schema.
type validatingTransport struct {
	t      testing.TB
	router routers.Router
	base   http.RoundTripper
}

func init() {
	// Text assets are validated as strings.
	text := func(body io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
		b, err := io.ReadAll(body)
		return string(b), err
	}
	for _, ct := range []string{"text/html", "text/javascript", "text/css", "application/typescript"} {
		openapi3filter.RegisterBodyDecoder(ct, text)
	}
}

func newValidatingTransport(t testing.TB, serverURL string) *validatingTransport {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(openAPIDoc)
	if err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.yaml is not valid OpenAPI: %v", err)
	}
	doc.Servers = openapi3.Servers{{URL: serverURL}}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &validatingTransport{t: t, router: router, base: http.DefaultTransport}
}

func (v *validatingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := v.base.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	route, params, ferr := v.router.FindRoute(req)
	if ferr != nil {
		if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed && req.Method != http.MethodOptions {
			v.t.Errorf("%s %s is not in openapi.yaml (%v) but answered %d", req.Method, req.URL.Path, ferr, resp.StatusCode)
		}
		return resp, nil
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 resp.StatusCode,
		Header:                 resp.Header,
		Options:                &openapi3filter.Options{IncludeResponseStatus: true},
	}
	ct := resp.Header.Get("Content-Type")
	if resp.StatusCode == http.StatusSwitchingProtocols || strings.HasPrefix(ct, "text/event-stream") || strings.HasPrefix(ct, "application/x-ndjson") {
		in.Options.ExcludeResponseBody = true
	} else {
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		resp.Body = io.NopCloser(bytes.NewReader(body))
		in.SetBodyBytes(body)
	}
	if err := openapi3filter.ValidateResponse(req.Context(), in); err != nil {
		v.t.Errorf("openapi.yaml does not describe %s %s → %d: %v", req.Method, req.URL.Path, resp.StatusCode, err)
	}
	return resp, nil
}

// waitFor polls cond until it holds or 5 s pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// serverSubs is the number of subscriptions the NATS server holds.
func (g *gateway) serverSubs() int {
	return int(g.e.NumSubscriptions())
}
