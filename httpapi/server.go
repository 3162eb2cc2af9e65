package httpapi

import (
	"context"
	"io/fs"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/natsgate/natsgate/bridge"
)

// Broker is what the edge needs from the NATS side; *bridge.Pool is one.
type Broker interface {
	// Acquire returns the token's shared connection, with a reference the
	// caller releases.
	Acquire(ctx context.Context, token string) (*bridge.Conn, error)
	// AcquireHeld is Acquire for a token whose connection is already
	// held and ready, and nil for any other: it never asks NATS.
	AcquireHeld(token string) *bridge.Conn
	// Ready reports whether NATS is usable.
	Ready(ctx context.Context) error
	// Stats reports the connections held.
	Stats() bridge.Stats
}

// Config holds the edge's limits and assets. Zero values mean the defaults
// stated on each field.
type Config struct {
	// MaxSubjectLen bounds subjects, reply subjects and queue names.
	// Zero means 256 bytes.
	MaxSubjectLen int
	// RequestTimeout is a request's timeout when the client gives none.
	// Zero means 5 s.
	RequestTimeout time.Duration
	// MaxRequestTimeout bounds the timeout a client may ask for. Zero
	// means 60 s.
	MaxRequestTimeout time.Duration
	// KeepAlive is the interval of SSE keep-alive comments, NDJSON blank
	// lines and WebSocket pings. Zero means 15 s.
	KeepAlive time.Duration
	// QueueBytes bounds each stream's and session's outbound queue. Past
	// it, messages of core subscriptions are dropped and the client told;
	// JetStream subscriptions wait for room instead. Zero means 1 MiB.
	QueueBytes int
	// SlowConsumerGrace is how long a client may keep overflowing its
	// queue, or leave a JetStream subscription waiting for room, before it
	// is closed. Zero means 5 s.
	SlowConsumerGrace time.Duration
	// WriteTimeout bounds each write to a streaming client; a client that
	// takes longer is closed. Zero means 10 s.
	WriteTimeout time.Duration
	// MaxBatchBytes bounds a batch publish body. Zero means 16 MiB.
	MaxBatchBytes int64
	// MaxBatchEntries bounds the entries of a batch publish. Zero means
	// 10000.
	MaxBatchEntries int
	// MaxStreamsPerToken bounds the open SSE and NDJSON subscription
	// streams of one token; one more is refused with 429. Zero means
	// 10000.
	MaxStreamsPerToken int
	// AuthFailureLimit is how many failed authentications, attempts in
	// flight included, a client (an IPv4 address or an IPv6 /64) may have
	// per AuthFailureWindow before it gets 429. A token whose connection
	// the broker already holds is not refused. Zero means 20; negative
	// disables the limit.
	AuthFailureLimit int
	// AuthFailureWindow: see AuthFailureLimit. Zero means 1 minute.
	AuthFailureWindow time.Duration
	// AllowedOrigins lists the browser origins allowed besides the
	// gateway's own, for CORS and WebSocket upgrades alike: host patterns
	// ("app.example.com", "*.example.com") or, with a scheme,
	// "https://app.example.com", matched with path.Match. Empty allows
	// only the gateway's own origin.
	AllowedOrigins []string
	// TrustedProxies lists the reverse proxies (CIDRs) whose Forwarded,
	// X-Forwarded-For, X-Forwarded-Proto and X-Forwarded-Host headers are
	// believed: they then give the client's address (for the failed
	// authentication limit, the access log and sessions) and the scheme
	// and host of the gateway's own origin. Empty believes no one: the
	// headers are ignored.
	TrustedProxies []netip.Prefix
	// OpenAPI is the document served at /openapi.yaml.
	OpenAPI []byte
	// Assets holds the browser files: index.html (served at /), client.js,
	// client.d.ts, console.js and console.css. Nil serves none.
	Assets fs.FS
	// WS configures WebSocket sessions.
	WS WSConfig
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.MaxSubjectLen <= 0 {
		c.MaxSubjectLen = bridge.DefaultMaxSubjectLen
	}
	def(&c.RequestTimeout, 5*time.Second)
	def(&c.MaxRequestTimeout, 60*time.Second)
	def(&c.KeepAlive, 15*time.Second)
	def(&c.SlowConsumerGrace, 5*time.Second)
	def(&c.WriteTimeout, 10*time.Second)
	def(&c.AuthFailureWindow, time.Minute)
	if c.QueueBytes <= 0 {
		c.QueueBytes = 1 << 20
	}
	if c.MaxBatchBytes <= 0 {
		c.MaxBatchBytes = 16 << 20
	}
	if c.MaxBatchEntries <= 0 {
		c.MaxBatchEntries = 10000
	}
	if c.MaxStreamsPerToken <= 0 {
		c.MaxStreamsPerToken = 10000
	}
	if c.AuthFailureLimit == 0 {
		c.AuthFailureLimit = 20
	}
	c.WS.setDefaults()
}

// Server is the gateway's HTTP handler.
type Server struct {
	logger  *slog.Logger
	broker  Broker
	cfg     Config
	metrics *Metrics
	// wsDropped and wsOut count WebSocket messages dropped for slow
	// consumers and written, looked up once.
	wsDropped, wsOut prometheus.Counter
	failures         *failureLimiter
	router           chi.Router
	routeCtxs        sync.Pool       // *chi.Context, see ServeHTTP
	sessions         *sessionCounter // WebSocket sessions per token
	streams          *sessionCounter // SSE and NDJSON streams per token

	closing   chan struct{} // closed by Shutdown
	closeOnce sync.Once

	liveMu    sync.Mutex
	live      map[*session]struct{} // open WebSocket sessions
	pingStart sync.Once
}

// NewServer returns the gateway's handler with every route of openapi.yaml.
func NewServer(logger *slog.Logger, broker Broker, cfg Config) *Server {
	cfg.setDefaults()
	s := &Server{
		logger:   logger,
		broker:   broker,
		cfg:      cfg,
		metrics:  newMetrics(broker),
		failures: newFailureLimiter(cfg.AuthFailureLimit, cfg.AuthFailureWindow),
		sessions: newSessionCounter(cfg.WS.MaxSessionsPerToken, "WebSocket sessions"),
		streams:  newSessionCounter(cfg.MaxStreamsPerToken, "subscription streams (SSE or NDJSON)"),
		closing:  make(chan struct{}),
		live:     make(map[*session]struct{}),
	}
	s.wsDropped = s.metrics.dropped.WithLabelValues("ws")
	s.wsOut = s.metrics.msgsOut.WithLabelValues("ws")
	s.router = s.addRoutes()
	s.routeCtxs.New = func() any { return chi.NewRouteContext() }
	return s
}

// ServeHTTP routes the request with a routing context of its own
// requestCtx (chi, finding one, makes none); mounted in a chi router,
// it goes on with that router's routing context.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if chi.RouteContext(r.Context()) != nil {
		s.router.ServeHTTP(w, r)
		return
	}
	rc := &requestCtx{Context: r.Context(), route: s.routeCtxs.Get().(*chi.Context)}
	rc.route.Reset()
	rc.route.Routes = s.router
	s.router.ServeHTTP(w, r.WithContext(rc))
	s.routeCtxs.Put(rc.route)
}

// Shutdown starts the gateway's exit: /readyz answers 503, new /v1
// requests are refused with 503, SSE and NDJSON streams end and WebSocket
// sessions close with 1001. In-flight requests finish; the http.Server's
// Shutdown waits for them.
func (s *Server) Shutdown() {
	s.closeOnce.Do(func() {
		s.liveMu.Lock()
		close(s.closing)
		live := make([]*session, 0, len(s.live))
		for ss := range s.live {
			live = append(live, ss)
		}
		s.liveMu.Unlock()
		for _, ss := range live {
			go ss.closeWS(websocket.StatusGoingAway, "gateway shutting down")
		}
	})
}

func (s *Server) draining() bool {
	select {
	case <-s.closing:
		return true
	default:
		return false
	}
}

// addRoutes is the whole API, in the order of openapi.yaml.
func (s *Server) addRoutes() chi.Router {
	r := chi.NewRouter()
	r.Use(s.fromTrustedProxies, observe(s.logger, s.metrics), refuseURLTokens(s.metrics), s.cors, s.answerHead)
	r.NotFound(s.notFound)
	r.MethodNotAllowed(s.methodNotAllowed)
	// One flat router (no r.Route sub-router): each request is routed once.
	v1 := r.With(s.refuseWhileDraining)
	v1.Post("/v1/publish/{subject}", s.handlePublish())
	v1.Post("/v1/publish", s.handlePublishBatch())
	v1.Post("/v1/request/{subject}", s.handleRequest())
	v1.Get("/v1/subscribe/{subject}", s.handleSubscribe(formatByAccept))
	v1.Get("/v1/streams", s.handleListStreams())
	v1.Put("/v1/streams/{stream}", s.handlePutStream())
	v1.Get("/v1/streams/{stream}", s.handleGetStream())
	v1.Delete("/v1/streams/{stream}", s.handleDeleteStream())
	v1.Post("/v1/js/publish/{subject}", s.handleJSPublish())
	v1.Post("/v1/js/publish", s.handleJSPublishBatch())
	v1.Get("/v1/ws", s.handleWS())
	// Key-value buckets; a key is the rest of the path (keys may hold '/').
	v1.Get("/v1/kv/{bucket}/*", s.handleKVGet())
	v1.Put("/v1/kv/{bucket}/*", s.handleKVPut())
	v1.Post("/v1/kv/{bucket}/*", s.handleKVCreate())
	v1.Delete("/v1/kv/{bucket}/*", s.handleKVDelete())
	v1.Get("/v1/kvm/buckets", s.handleKVBuckets())
	v1.Post("/v1/kvm/buckets/{bucket}", s.handleKVBucketCreate())
	v1.Get("/v1/kvm/buckets/{bucket}", s.handleKVBucketInfo())
	v1.Delete("/v1/kvm/buckets/{bucket}", s.handleKVBucketDelete())
	v1.Get("/v1/kvm/buckets/{bucket}/keys", s.handleKVKeys())
	v1.Get("/v1/kvm/buckets/{bucket}/watch", s.handleKVWatch())
	// Synadia-compatible core routes.
	v1.Put("/v1/nats/subjects/{subject}", s.handlePublish())
	v1.Post("/v1/nats/subjects/{subject}", s.handleNATSRequest())
	v1.Get("/v1/nats/subjects/{subject}", s.handleSubscribe(natsSubjectsStream))
	r.Get("/healthz", handleHealthz())
	r.Get("/readyz", s.handleReadyz())
	r.Get("/metrics", s.metrics.handler().ServeHTTP)
	r.Get("/openapi.yaml", handleOpenAPI(s.cfg.OpenAPI))
	if s.cfg.Assets != nil {
		r.Get("/", handleAsset(s.cfg.Assets, "index.html", "text/html; charset=utf-8"))
		for name, ct := range map[string]string{
			"client.js":   "text/javascript; charset=utf-8",
			"client.d.ts": "application/typescript; charset=utf-8",
			"console.js":  "text/javascript; charset=utf-8",
			"console.css": "text/css; charset=utf-8",
		} {
			r.Get("/"+name, handleAsset(s.cfg.Assets, name, ct))
		}
	}
	return r
}

func (s *Server) refuseWhileDraining(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.draining() {
			w.Header().Set("Connection", "close")
			writeError(w, r, errShuttingDown)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// track registers a live WebSocket session so Shutdown can close it; it
// is false once the gateway is shutting down.
func (s *Server) track(ss *session) bool {
	s.pingStart.Do(func() { go s.pinger() })
	s.liveMu.Lock()
	defer s.liveMu.Unlock()
	if s.draining() {
		return false
	}
	s.live[ss] = struct{}{}
	return true
}

// pinger sends every session a keep-alive ping each KeepAlive, from one
// goroutine for all sessions (a timer each would cost every idle session
// memory). Sessions opened at different times are due at different
// times, so pings spread over the interval; each ping runs on a goroutine
// of its own, which lives until the pong. It stops when the server shuts
// down.
func (s *Server) pinger() {
	tick := time.NewTicker(max(s.cfg.KeepAlive/8, 10*time.Millisecond))
	defer tick.Stop()
	var due []*session
	for {
		select {
		case <-s.closing:
			return
		case now := <-tick.C:
			s.liveMu.Lock()
			for ss := range s.live {
				if ss.pingDue(now.UnixNano()) {
					due = append(due, ss)
				}
			}
			s.liveMu.Unlock()
			for _, ss := range due {
				go ss.ping()
			}
			clear(due)
			due = due[:0]
		}
	}
}

func (s *Server) untrack(ss *session) {
	s.liveMu.Lock()
	delete(s.live, ss)
	s.liveMu.Unlock()
}
