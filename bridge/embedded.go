package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// EmbeddedConfig configures the embedded nats-server.
type EmbeddedConfig struct {
	// Listen is the host:port native NATS clients connect to. Empty keeps
	// the configuration file's listen address, or 127.0.0.1:4222 without
	// one. Use DontListen to have no listener at all.
	Listen string
	// DontListen disables the client listener: only the gateway, in-process,
	// reaches the server.
	DontListen bool
	// ConfigFile is a standard nats-server configuration file (routes,
	// TLS, limits, JetStream …). Empty means defaults.
	ConfigFile string
	// Tokens are the accepted tokens and their permissions. When set they
	// replace any authorization in ConfigFile; when nil the configuration
	// file's own authorization applies.
	Tokens []Token
	// OIDC, when set, has the server authenticate every client through
	// auth callout, answered by a service inside the gateway that accepts
	// the OIDC tokens this verifier passes, and Tokens alongside. It
	// replaces any authorization in ConfigFile, as Tokens does.
	OIDC *OIDCVerifier
	// Callout configures that service; its Issuer, OIDC and Tokens are
	// set by StartEmbedded.
	Callout CalloutConfig
	// JetStream turns JetStream on, storing in StoreDir (file storage).
	// Ignored with a ConfigFile, whose own jetstream {} block rules.
	JetStream bool
	// StoreDir is where JetStream keeps streams; required with JetStream.
	StoreDir string
	// ReadyTimeout bounds the wait for the server to accept connections.
	// Zero means 10 s.
	ReadyTimeout time.Duration
	// Logger receives the server's log lines. Nil discards them.
	Logger *slog.Logger
}

// ErrListen means the embedded server cannot listen for native clients at
// its address (most often: another process, a nats-server perhaps, holds
// the port).
var ErrListen = errors.New("the embedded nats-server cannot listen for native NATS clients")

// checkListen fails at once when the client port cannot be bound. Without
// it, nats-server logs its listen error after "Server is ready" and
// StartEmbedded would only give up when ReadyTimeout ends.
func checkListen(opts *server.Options) error {
	if opts.DontListen || opts.Port <= 0 {
		return nil // no listener, or a random port
	}
	addr := net.JoinHostPort(opts.Host, strconv.Itoa(opts.Port))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%w at %s: %v", ErrListen, addr, err)
	}
	return l.Close()
}

// Embedded is a nats-server running inside the gateway process.
type Embedded struct {
	s         *server.Server
	auth      *tokenAuth
	callout   *Callout
	calloutNC *nats.Conn
}

// embeddedMaxControlLine is the embedded server's max_control_line unless
// its configuration file sets one: CONNECT, with the token in it, is one
// control line, and nats-server's default of 4 KiB is too short for the
// OIDC access tokens of some identity providers.
const embeddedMaxControlLine = 64 << 10

// loadServerConfig reads a nats-server configuration file the way
// nats-server itself does.
func loadServerConfig(path string) (*server.Options, error) {
	return server.ProcessConfigFile(path)
}

// ConfigHasAuth reports whether a nats-server configuration file sets up
// client authorization of its own.
func ConfigHasAuth(path string) (bool, error) {
	o, err := loadServerConfig(path)
	if err != nil {
		return false, err
	}
	return o.Authorization != "" || o.Username != "" || len(o.Users) > 0 || len(o.Nkeys) > 0 ||
		len(o.TrustedOperators) > 0 || len(o.TrustedKeys) > 0 || o.AuthCallout != nil, nil
}

// StartEmbedded starts a nats-server as its own tests do: NoSigs, so the
// gateway owns signals, Start in a goroutine, and failure unless it is
// ready for connections within cfg.ReadyTimeout.
func StartEmbedded(cfg EmbeddedConfig) (*Embedded, error) {
	opts := &server.Options{}
	if cfg.ConfigFile != "" {
		var err error
		if opts, err = loadServerConfig(cfg.ConfigFile); err != nil {
			return nil, fmt.Errorf("nats config: %w", err)
		}
		// nats-server would listen on every interface without a host;
		// the gateway's embedded server stays on loopback unless told.
		if opts.Host == "" {
			opts.Host = "127.0.0.1"
		}
		if opts.Port == 0 {
			opts.Port = 4222
		}
	} else {
		opts.Host, opts.Port = "127.0.0.1", 4222
		if cfg.JetStream {
			if cfg.StoreDir == "" {
				return nil, errors.New("embedded JetStream needs a store directory")
			}
			opts.JetStream, opts.StoreDir = true, cfg.StoreDir
		}
	}
	if cfg.Listen != "" {
		host, port, err := net.SplitHostPort(cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("nats listen address %q: %w", cfg.Listen, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("nats listen port %q: %w", port, err)
		}
		if p == 0 {
			p = server.RANDOM_PORT
		}
		opts.Host, opts.Port = host, p
	}
	opts.DontListen = cfg.DontListen
	if err := checkListen(opts); err != nil {
		return nil, err
	}
	opts.NoSigs = true
	// nats-server sends a new client its first PING 2 s after the
	// connection came, PONG sent or not, and clients (nats.go among them)
	// fail a connect whose first answer is a PING: "expected 'PONG', got
	// 'PING'" (nats-server#1174). A token check slower than that (bcrypt
	// tokens on a loaded machine, compared again after a reload) would be a
	// 503; the first PING waits for the ping interval instead.
	opts.DisableShortFirstPing = true
	if opts.MaxControlLine == 0 {
		opts.MaxControlLine = embeddedMaxControlLine
	}
	var (
		e       Embedded
		callout *calloutSetup
	)
	switch {
	case cfg.OIDC != nil:
		e.auth = newTokenAuth(cfg.Tokens)
		opts.Authorization, opts.Username, opts.Password, opts.Users, opts.Nkeys = "", "", "", nil, nil
		var err error
		if callout, err = configureCallout(opts); err != nil {
			return nil, err
		}
	case cfg.Tokens != nil:
		e.auth = newTokenAuth(cfg.Tokens)
		opts.CustomClientAuthentication = e.auth
		opts.Authorization, opts.Username, opts.Password, opts.Users, opts.Nkeys = "", "", "", nil, nil
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats server: %w", err)
	}
	if cfg.Logger != nil {
		s.SetLoggerV2(slogAdapter{cfg.Logger}, opts.Debug, false, false)
	}
	go s.Start()
	wait := cfg.ReadyTimeout
	if wait <= 0 {
		wait = 10 * time.Second
	}
	if !s.ReadyForConnections(wait) {
		s.Shutdown()
		return nil, errors.New("embedded nats-server did not become ready (is the NATS port in use?)")
	}
	e.s = s
	if callout != nil {
		ccfg := cfg.Callout
		ccfg.Issuer, ccfg.OIDC, ccfg.Tokens = callout.issuer, cfg.OIDC, nil
		if ccfg.Logger == nil {
			ccfg.Logger = cfg.Logger
		}
		if err := e.startCallout(callout, ccfg); err != nil {
			s.Shutdown()
			return nil, err
		}
	}
	return &e, nil
}

// ClientURL returns the URL native clients use, or "" without a listener.
func (e *Embedded) ClientURL() string {
	if e.s.Addr() == nil {
		return ""
	}
	return e.s.ClientURL()
}

// JetStreamEnabled reports whether the server runs JetStream.
func (e *Embedded) JetStreamEnabled() bool { return e.s.JetStreamEnabled() }

// Ready reports whether the server is running and accepting clients.
func (e *Embedded) Ready() bool { return e.s.Running() }

// TokenName returns the tokens-file name of the token with this key, or
// the name the callout service gave its OIDC subject, when the server
// knows it.
func (e *Embedded) TokenName(key TokenKey) (string, bool) {
	if e.auth != nil {
		if name, ok := e.auth.name(key); ok {
			return name, true
		}
	}
	if e.callout != nil {
		if name, _, ok := e.callout.Issued(key); ok {
			return name, true
		}
	}
	return "", false
}

// SetTokens replaces the accepted tokens (a tokens-file reload) and
// disconnects every client, native or the gateway's own, whose token was
// removed or had its entry changed: they reconnect under the new rules or
// are refused. It returns the names affected and the keys of their tokens
// seen so far, for Pool.Forget. A check under way meanwhile is decided
// by the new tokens, or, if it was decided just before, its client is
// among those disconnected and its key among those returned.
func (e *Embedded) SetTokens(tokens []Token) ([]string, []TokenKey, error) {
	if e.auth == nil {
		return nil, nil, errors.New("the embedded server does not use gateway tokens")
	}
	changed, keys := e.auth.set(tokens)
	for _, name := range changed {
		cz, err := e.s.Connz(&server.ConnzOptions{User: name, Limit: 1 << 20})
		if err != nil {
			return changed, keys, err
		}
		for _, c := range cz.Conns {
			_ = e.s.DisconnectClientByID(c.Cid)
		}
	}
	return changed, keys, nil
}

// Shutdown stops the server, waiting at most until ctx ends.
func (e *Embedded) Shutdown(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		if e.callout != nil {
			e.callout.Stop()
			e.calloutNC.Close()
		}
		e.s.Shutdown()
		e.s.WaitForShutdown()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("embedded nats-server shutdown: %w", ctx.Err())
	}
}

// slogAdapter routes nats-server's log lines to slog.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Noticef(format string, v ...any) { a.log(slog.LevelInfo, format, v) }
func (a slogAdapter) Warnf(format string, v ...any)   { a.log(slog.LevelWarn, format, v) }
func (a slogAdapter) Fatalf(format string, v ...any)  { a.log(slog.LevelError, format, v) }
func (a slogAdapter) Errorf(format string, v ...any)  { a.log(slog.LevelError, format, v) }
func (a slogAdapter) Debugf(format string, v ...any)  { a.log(slog.LevelDebug, format, v) }
func (a slogAdapter) Tracef(format string, v ...any)  { a.log(slog.LevelDebug-4, format, v) }

func (a slogAdapter) log(level slog.Level, format string, v []any) {
	if a.l.Enabled(context.Background(), level) {
		a.l.Log(context.Background(), level, fmt.Sprintf(format, v...))
	}
}

// NumSubscriptions is the number of subscriptions the server holds, from
// every client.
func (e *Embedded) NumSubscriptions() uint32 { return e.s.NumSubscriptions() }
