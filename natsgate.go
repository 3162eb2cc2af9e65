// Package natsgate is an HTTP and WebSocket gateway to a token-authenticated
// NATS server, as a library: [New] returns the whole gateway (publish,
// request, SSE/NDJSON subscriptions, WebSocket sessions, health, metrics,
// the browser console and client.js) as an [http.Handler] to mount in your
// own Go server, under any path prefix:
//
//	gw, err := natsgate.New(natsgate.Options{
//		Tokens: []natsgate.Token{{Name: "app", Token: secret}},
//	})
//	if err != nil { … }
//	mux := http.NewServeMux()
//	mux.Handle("/nats/", http.StripPrefix("/nats", gw))
//
// Without [Options.NATSURL] it runs an embedded nats-server, reached
// in-process, with token authentication on; with it, it uses your NATS
// servers and they decide which tokens work. Browsers use the JS client
// with the prefix in its url option: connect({url: "/nats", token}).
//
// The gateway as a command is cmd/gateway; the packages bridge (NATS side)
// and httpapi (HTTP side) hold the parts New wires, for finer control.
// OpenAPI is the contract of the HTTP API.
package natsgate

import (
	"context"
	_ "embed"
	"errors"
	"log/slog"
	"net/http"

	"github.com/natsgate/natsgate/bridge"
	"github.com/natsgate/natsgate/httpapi"
	"github.com/natsgate/natsgate/web"
)

// OpenAPI is openapi.yaml, the machine-readable form of the HTTP API,
// served at /openapi.yaml and checked against real responses in tests.
//
//go:embed openapi.yaml
var OpenAPI []byte

// Token is a token the embedded server accepts, with its NATS permissions
// (nil: everything). Token may be a bcrypt hash ("$2a$…"); logs and
// metrics show only Name.
type Token = bridge.Token

// SubjectPermission lists allowed and denied subjects, as nats-server's
// permissions do.
type SubjectPermission = bridge.SubjectPermission

// Options configure a [Gateway]. Zero values mean the defaults stated.
type Options struct {
	// NATSURL lists the NATS servers to use, comma-separated
	// ("nats://a:4222,nats://b:4222"). Empty starts an embedded
	// nats-server.
	NATSURL string
	// Tokens are the embedded server's tokens. Required for the embedded
	// server unless NATSConfig sets up authorization of its own; ignored
	// with NATSURL.
	Tokens []Token
	// NATSListen is where the embedded server also accepts native NATS
	// clients ("127.0.0.1:4222"; port 0 picks one, see NATSClientURL).
	// Empty means none, only the gateway reaches it, in-process; with a
	// NATSConfig, empty keeps the file's own listen address.
	NATSListen string
	// NATSConfig is a nats-server configuration file for the embedded
	// server (cluster, TLS, limits, JetStream). Empty means defaults.
	NATSConfig string
	// Logger receives the access log and NATS events. Nil discards them.
	Logger *slog.Logger
	// HTTP sets the HTTP side's limits, allowed origins and trusted
	// proxies. Nil OpenAPI and Assets mean the project's own document and
	// browser files.
	HTTP httpapi.Config
	// NATS sets the per-token connection pool's bounds and timeouts; New
	// sets its URL, Server and Logger.
	NATS bridge.Config
}

// Gateway is a running gateway: an http.Handler, and the NATS side it
// owns. Close it when done.
type Gateway struct {
	api      *httpapi.Server
	pool     *bridge.Pool
	embedded *bridge.Embedded
}

// New starts the gateway: the embedded nats-server (unless
// Options.NATSURL is set) and the connection pool. The handler serves the
// routes of OpenAPI relative to where it is mounted; strip the prefix
// (http.StripPrefix, or chi's Mount, which does).
func New(o Options) (*Gateway, error) {
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	g := &Gateway{}
	pcfg := o.NATS
	pcfg.URL, pcfg.Server, pcfg.Logger = o.NATSURL, nil, logger.With("component", "bridge")
	if o.NATSURL == "" {
		if len(o.Tokens) == 0 && o.NATSConfig == "" {
			return nil, errors.New("natsgate: the embedded server needs Tokens (or a NATSConfig with its own authorization)")
		}
		ecfg := bridge.EmbeddedConfig{Listen: o.NATSListen, DontListen: o.NATSListen == "" && o.NATSConfig == "", ConfigFile: o.NATSConfig,
			Tokens: o.Tokens, Logger: logger.With("component", "nats-server")}
		e, err := bridge.StartEmbedded(ecfg)
		if err != nil {
			return nil, err
		}
		g.embedded, pcfg.Server = e, e
	}
	g.pool = bridge.NewPool(pcfg)
	hcfg := o.HTTP
	if hcfg.OpenAPI == nil {
		hcfg.OpenAPI = OpenAPI
	}
	if hcfg.Assets == nil {
		hcfg.Assets = web.Assets
	}
	g.api = httpapi.NewServer(logger.With("component", "http"), g.pool, hcfg)
	return g, nil
}

// ServeHTTP serves the gateway's API.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) { g.api.ServeHTTP(w, r) }

// NATSClientURL is where native NATS clients reach the embedded server
// ("nats://127.0.0.1:4222"), or "" without a listener or an embedded
// server.
func (g *Gateway) NATSClientURL() string {
	if g.embedded == nil {
		return ""
	}
	return g.embedded.ClientURL()
}

// Shutdown starts the gateway's exit and returns at once: /readyz and new
// /v1 requests answer 503, SSE and NDJSON streams end, WebSocket sessions
// close with 1001. Call it before your http.Server's Shutdown, which would
// otherwise wait for those streams.
func (g *Gateway) Shutdown() { g.api.Shutdown() }

// Close shuts the gateway down (Shutdown), drains its NATS connections
// and stops the embedded server, waiting at most until ctx ends. Call it
// once your http.Server's Shutdown has let in-flight requests finish.
func (g *Gateway) Close(ctx context.Context) error {
	g.api.Shutdown()
	err := g.pool.Close(ctx)
	if g.embedded != nil {
		err = errors.Join(err, g.embedded.Shutdown(ctx))
	}
	return err
}
