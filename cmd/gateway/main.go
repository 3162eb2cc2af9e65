// Command gateway runs natsgate: an HTTP and WebSocket gateway to a
// token-authenticated NATS server, embedded by default.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/natsgate/natsgate"
	"github.com/natsgate/natsgate/bridge"
	"github.com/natsgate/natsgate/httpapi"
	"github.com/natsgate/natsgate/web"
)

var _ httpapi.Broker = (*bridge.Pool)(nil)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "natsgate:", err)
		os.Exit(1)
	}
}

// run is the whole program: parse flags, start the NATS side, serve HTTP
// until ctx ends, then shut down in reverse order within a bound. Tests
// call it directly with "--listen 127.0.0.1:0".
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "callout" {
		return runCallout(ctx, args[1:], getenv, stderr)
	}
	cfg, err := parseFlags(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if cfg.version {
		fmt.Fprintln(stdout, readVersion())
		return nil
	}
	logger, err := newLogger(cfg.logFormat, cfg.logLevel, stderr)
	if err != nil {
		return err
	}
	if err := checkJetStreamFlags(cfg); err != nil {
		return err
	}
	if err := checkOIDCFlags(cfg); err != nil {
		return err
	}
	proxies, err := parseTrustedProxies(cfg.trustedProxies)
	if err != nil {
		return err
	}
	var cert *certificate // nil: plain HTTP
	if cfg.tlsCert != "" || cfg.tlsKey != "" {
		if cert, err = loadCertificate(cfg.tlsCert, cfg.tlsKey); err != nil {
			return err
		}
	}

	var (
		embedded   *bridge.Embedded
		generated  string
		tokenCount int
	)
	poolCfg := bridge.Config{
		URL:            cfg.natsURL,
		IdleTimeout:    cfg.idleTimeout,
		MaxTokens:      cfg.maxTokens,
		ConnectTimeout: cfg.connectTimeout,
		ConfirmTimeout: cfg.confirmTimeout,
		StoredInFlight: cfg.jsMaxInflight,
		Logger:         logger.With("component", "bridge"),
	}
	if cfg.natsURL == "" {
		ecfg := bridge.EmbeddedConfig{ConfigFile: cfg.natsConfig, Logger: logger.With("component", "nats-server")}
		switch strings.ToLower(cfg.natsListen) {
		case "off", "none", "":
			ecfg.DontListen = true
		default:
			if cfg.natsConfig == "" || cfg.set["nats-listen"] {
				ecfg.Listen = cfg.natsListen
			}
		}
		if ecfg.Tokens, generated, err = gatewayTokens(cfg); err != nil {
			return err
		}
		if ecfg.OIDC, err = cfg.oidc.verifier(ctx, cfg.set); err != nil {
			return err
		}
		if ecfg.OIDC != nil {
			logger.Info("OIDC bearer tokens accepted through auth callout", "issuer", cfg.oidc.issuer, "audience", cfg.oidc.audience,
				"permissions_claim", cfg.oidc.permissionsClaim, "default_permissions", cfg.oidc.defaultPermissions)
		}
		if cfg.natsConfig == "" && cfg.jetstream {
			ecfg.JetStream, ecfg.StoreDir = true, cfg.storeDir
			if ecfg.StoreDir == "" {
				// A directory of this run's own: the next run makes
				// another and would never find these streams, so they
				// go at exit (after the server, deferred first).
				if ecfg.StoreDir, err = os.MkdirTemp("", "natsgate-jetstream-"); err != nil {
					return fmt.Errorf("JetStream store directory: %w", err)
				}
				defer os.RemoveAll(ecfg.StoreDir)
				fmt.Fprintf(stdout, "natsgate: JetStream keeps streams in %s, a temporary directory removed at exit (--store-dir DIR keeps them)\n", ecfg.StoreDir)
			}
		}
		tokenCount = len(ecfg.Tokens)
		if embedded, err = bridge.StartEmbedded(ecfg); err != nil {
			if errors.Is(err, bridge.ErrListen) {
				return fmt.Errorf("%w; choose another address with --nats-listen host:port, or --nats-listen off to serve only the gateway", err)
			}
			return err
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
			defer cancel()
			_ = embedded.Shutdown(sctx)
		}()
		poolCfg.Server = embedded
		attrs := []any{"client_url", embedded.ClientURL(), "jetstream", embedded.JetStreamEnabled()}
		if ecfg.StoreDir != "" {
			attrs = append(attrs, "store_dir", ecfg.StoreDir)
		}
		logger.Info("embedded nats-server started", attrs...)
	}
	pool := bridge.NewPool(poolCfg)
	if embedded == nil {
		if err := pool.Ready(ctx); err != nil {
			logger.Warn("NATS unreachable at start-up: /readyz, publishes and requests answer 503 until it answers", "nats_url", cfg.natsURL, "err", err)
		}
	}

	api := httpapi.NewServer(logger.With("component", "http"), pool, httpapi.Config{
		MaxSubjectLen:     cfg.maxSubjectLen,
		RequestTimeout:    cfg.requestTimeout,
		MaxRequestTimeout: cfg.maxRequestTimeout,
		KeepAlive:         cfg.keepAlive,
		QueueBytes:        cfg.queueBytes,
		SlowConsumerGrace: cfg.slowGrace,
		WriteTimeout:      cfg.writeTimeout,
		MaxBatchBytes:     cfg.maxBatchBytes,
		AuthFailureLimit:  cfg.authFailureLimit,
		AllowedOrigins:    splitList(cfg.allowedOrigins),
		TrustedProxies:    proxies,
		OpenAPI:           natsgate.OpenAPI,
		Assets:            web.Assets,
		// Subscription streams per token, as WS bounds sessions per token.
		MaxStreamsPerToken: cfg.maxStreams,
		WS: httpapi.WSConfig{
			ConnectTimeout:      cfg.connectFrameTimeout,
			MaxFrameBytes:       cfg.maxFrameBytes,
			MaxSubscriptions:    cfg.maxSubscriptions,
			MaxSessionsPerToken: cfg.maxSessions,
			MaxInflight:         cfg.maxInflight,
			ExpiryNotice:        cfg.expiryNotice,
		},
	})

	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		_ = pool.Close(context.Background())
		return fmt.Errorf("listen: %w", err)
	}
	base := "http://" + ln.Addr().String()
	if cert != nil {
		base = "https://" + ln.Addr().String()
	}
	tokens := describeTokens(cfg, embedded, tokenCount, generated)
	// The banner before the listening line: whoever waits for that line
	// (gatewayproc.ListenAddr) finds the banner complete.
	printBanner(stdout, banner{base: base, embedded: embedded, natsURL: cfg.natsURL, tokens: tokens,
		reloads: cfg.tokensFile != "" && embedded != nil || cert != nil})
	if tokens.count > 0 {
		logger.Info("tokens loaded", "count", tokens.count, "from", tokens.from)
	}
	// The address first: tools read it from this line (gatewayproc.ListenAddr).
	attrs := append([]any{"addr", ln.Addr().String()}, readVersion().logAttrs()...)
	logger.Info("natsgate listening", append(attrs, "pid", os.Getpid(), "url", base, "nats", natsDescription(cfg, embedded))...)
	srv := &http.Server{
		Handler:           api,
		ReadHeaderTimeout: cfg.readHeaderTimeout,
		// Bounds reading a whole request, body included; streams and
		// WebSocket sessions lift it once they start.
		ReadTimeout:    cfg.readHeaderTimeout + cfg.bodyTimeout,
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
	serveErr := make(chan error, 1)
	if cert != nil {
		srv.TLSConfig = cert.tlsConfig()
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetHTTP1(true)
		srv.Protocols.SetHTTP2(true)
		go func() { serveErr <- srv.ServeTLS(ln, "", "") }()
	} else {
		go func() { serveErr <- srv.Serve(ln) }()
	}
	if cfg.debugListen != "" {
		dbg, err := startDebug(cfg.debugListen)
		if err != nil {
			_ = srv.Close()
			_ = pool.Close(context.Background())
			return err
		}
		defer dbg.Close()
		logger.Info("pprof listening", "addr", cfg.debugListen)
	}

	// SIGHUP reloads the tokens file and the TLS pair, each keeping what
	// it had when the new files are broken.
	hup := make(chan os.Signal, 1)
	if cfg.tokensFile != "" && embedded != nil || cert != nil {
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
	}
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case err := <-serveErr:
			_ = pool.Close(context.Background())
			return fmt.Errorf("serve: %w", err)
		case <-hup:
			if cfg.tokensFile != "" && embedded != nil {
				reloadTokens(logger, cfg.tokensFile, embedded, pool)
			}
			if cert != nil {
				cert.reload(logger)
			}
		}
	}

	logger.Info("shutting down", "timeout", cfg.shutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	api.Shutdown()
	if err := srv.Shutdown(sctx); err != nil {
		logger.Warn("http shutdown incomplete", "err", err)
		_ = srv.Close()
	}
	if err := pool.Close(sctx); err != nil {
		logger.Warn("nats drain incomplete", "err", err)
	}
	logger.Info("stopped")
	return nil
}

// checkJetStreamFlags refuses --jetstream and --store-dir where they
// would be ignored: they configure the embedded server, unless its
// --nats-config file's jetstream {} block does.
func checkJetStreamFlags(cfg *config) error {
	given := cfg.set["jetstream"] || cfg.set["store-dir"]
	switch {
	case given && cfg.natsURL != "":
		return errors.New("--jetstream and --store-dir configure the embedded server; with --nats-url JetStream is what the NATS servers run")
	case given && cfg.natsConfig != "":
		return errors.New("with --nats-config the file's jetstream {} block decides (store_dir included): drop --jetstream and --store-dir")
	case cfg.set["store-dir"] && !cfg.jetstream:
		return errors.New("--store-dir without JetStream (--jetstream=false)")
	}
	return nil
}

// gatewayTokens decides the embedded server's tokens: the tokens file,
// --token, none beside OIDC tokens, the configuration file's own
// authorization, or a generated token (returned so it can be printed once).
func gatewayTokens(cfg *config) (tokens []bridge.Token, generated string, err error) {
	switch {
	case cfg.tokensFile != "" && cfg.token != "":
		return nil, "", errors.New("give --token or --tokens-file, not both")
	case cfg.tokensFile != "":
		tokens, err = readTokensFile(cfg.tokensFile)
		return tokens, "", err
	case cfg.token != "":
		return []bridge.Token{{Name: "default", Token: cfg.token}}, "", nil
	case cfg.oidc.issuer != "":
		return nil, "", nil // OIDC tokens only
	case cfg.natsConfig != "":
		has, err := bridge.ConfigHasAuth(cfg.natsConfig)
		if err != nil {
			return nil, "", fmt.Errorf("nats config: %w", err)
		}
		if has {
			return nil, "", nil
		}
	}
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, "", err
	}
	generated = base64.RawURLEncoding.EncodeToString(b[:])
	return []bridge.Token{{Name: "default", Token: generated}}, generated, nil
}

func readTokensFile(path string) ([]bridge.Token, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokens file: %w", err)
	}
	return bridge.ParseTokens(data)
}

// reloadTokens applies a changed tokens file: the others' sessions go on;
// connections of removed or changed tokens are closed.
func reloadTokens(logger *slog.Logger, path string, e *bridge.Embedded, pool *bridge.Pool) {
	tokens, err := readTokensFile(path)
	if err != nil {
		logger.Error("tokens file reload failed; keeping the previous tokens", "file", path, "err", err)
		return
	}
	changed, keys, err := e.SetTokens(tokens)
	pool.Forget(keys...)
	if err != nil {
		logger.Error("tokens file reload: disconnecting clients", "err", err)
	}
	logger.Info("tokens file reloaded", "file", path, "tokens", len(tokens), "removed_or_changed", changed)
}

func natsDescription(cfg *config, e *bridge.Embedded) string {
	if e == nil {
		return cfg.natsURL
	}
	if u := e.ClientURL(); u != "" {
		return "embedded, native clients at " + u
	}
	return "embedded, in-process only"
}

// startDebug serves net/http/pprof on its own listener, apart from the API.
func startDebug(addr string) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("debug listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return srv, nil
}

func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

func newLogger(format, level string, w io.Writer) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format must be text or json, not %q", format)
}
