package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"
)

// config is the parsed command line and environment.
type config struct {
	listen              string
	token               string
	tokensFile          string
	natsURL             string
	natsListen          string
	natsConfig          string
	jetstream           bool
	storeDir            string
	jsMaxInflight       int
	maxTokens           int
	idleTimeout         time.Duration
	connectTimeout      time.Duration
	confirmTimeout      time.Duration
	requestTimeout      time.Duration
	maxRequestTimeout   time.Duration
	maxSubjectLen       int
	keepAlive           time.Duration
	queueBytes          int
	slowGrace           time.Duration
	writeTimeout        time.Duration
	readHeaderTimeout   time.Duration
	bodyTimeout         time.Duration
	maxBatchBytes       int64
	authFailureLimit    int
	allowedOrigins      string
	connectFrameTimeout time.Duration
	expiryNotice        time.Duration
	maxFrameBytes       int64
	maxSubscriptions    int
	maxSessions         int
	maxStreams          int
	maxInflight         int
	shutdownTimeout     time.Duration
	debugListen         string
	logFormat           string
	logLevel            string
	tlsCert             string
	tlsKey              string
	trustedProxies      string
	version             bool
	oidc                oidcFlags

	set map[string]bool // flags given on the command line or in the environment
}

// envName is a flag's environment twin: --nats-url is GATEWAY_NATS_URL.
// --version has none: a GATEWAY_VERSION a deployment sets for its own
// purposes must not turn the gateway into a version printer.
func envName(flagName string) string {
	if flagName == "version" {
		return ""
	}
	return "GATEWAY_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseFlags reads flags, then fills every flag not given on the command
// line from its GATEWAY_* environment variable.
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (*config, error) {
	c := &config{set: map[string]bool{}}
	fs := flag.NewFlagSet("natsgate", flag.ContinueOnError)
	// The flag package would print a parse error and the whole usage; the
	// error is printed once, by main, and the usage only for --help.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&c.listen, "listen", "127.0.0.1:8080", "HTTP listen address")
	fs.StringVar(&c.token, "token", "", "token the embedded NATS server accepts (all permissions); generated and printed once when neither it nor --tokens-file is set")
	fs.StringVar(&c.tokensFile, "tokens-file", "", "JSON file of named tokens with NATS permissions for the embedded server; reloaded on SIGHUP")
	fs.StringVar(&c.natsURL, "nats-url", "", "use these NATS servers (comma-separated) instead of an embedded one")
	fs.StringVar(&c.natsListen, "nats-listen", "127.0.0.1:4222", `embedded server's address for native NATS clients, or "off"`)
	fs.StringVar(&c.natsConfig, "nats-config", "", "nats-server configuration file for the embedded server (cluster, TLS, limits, JetStream)")
	fs.BoolVar(&c.jetstream, "jetstream", true, "run JetStream in the embedded server (--jetstream=false: off); with --nats-config its jetstream {} block decides")
	fs.StringVar(&c.storeDir, "store-dir", "", "directory where the embedded server's JetStream keeps streams (file storage); without it a temporary directory, removed at exit")
	fs.IntVar(&c.jsMaxInflight, "js-max-inflight", 256, "messages of one stored batch publish (/v1/js/publish) awaiting their stream's acknowledgement at once")
	fs.IntVar(&c.maxTokens, "max-tokens", 20000, "distinct tokens with an open NATS connection at once (about 90 KiB of memory each)")
	fs.DurationVar(&c.idleTimeout, "idle-timeout", 2*time.Minute, "close a token's NATS connection after it is unused this long")
	fs.DurationVar(&c.connectTimeout, "nats-connect-timeout", 5*time.Second, "bound on one NATS connection attempt")
	fs.DurationVar(&c.confirmTimeout, "confirm-timeout", 5*time.Second, "bound on the round trip that confirms a publish, on a JetStream API call and on a stored publish's acknowledgement")
	fs.DurationVar(&c.requestTimeout, "request-timeout", 5*time.Second, "request timeout when the client gives none")
	fs.DurationVar(&c.maxRequestTimeout, "max-request-timeout", 60*time.Second, "largest request timeout a client may ask for")
	fs.IntVar(&c.maxSubjectLen, "max-subject-length", 256, "longest subject, reply subject or queue group, in bytes")
	fs.DurationVar(&c.keepAlive, "keepalive", 15*time.Second, "interval of SSE keep-alive comments and WebSocket pings")
	fs.IntVar(&c.queueBytes, "queue-bytes", 1<<20, "outbound queue bound per stream or WebSocket session, in bytes; messages past it are dropped")
	fs.DurationVar(&c.slowGrace, "slow-consumer-grace", 5*time.Second, "close a client that keeps overflowing its queue this long")
	fs.DurationVar(&c.writeTimeout, "write-timeout", 10*time.Second, "close a streaming client that takes longer than this to accept a write or answer a ping")
	fs.DurationVar(&c.readHeaderTimeout, "read-header-timeout", 10*time.Second, "time allowed to send request headers")
	fs.DurationVar(&c.bodyTimeout, "body-timeout", 30*time.Second, "time allowed to send a request body")
	fs.Int64Var(&c.maxBatchBytes, "max-batch-bytes", 16<<20, "largest batch publish body, in bytes")
	fs.IntVar(&c.authFailureLimit, "auth-failure-limit", 20, "failed authentications per minute from one IPv4 address or IPv6 /64 before 429 (attempts in flight hold places; one that finds none free waits for one); tokens already connected still pass (negative: no limit)")
	fs.StringVar(&c.allowedOrigins, "allowed-origins", "", "browser origins allowed besides the gateway's own, comma-separated host patterns (CORS and WebSocket)")
	fs.DurationVar(&c.connectFrameTimeout, "ws-connect-timeout", 5*time.Second, "time a WebSocket client without an Authorization header has to send its connect frame")
	fs.Int64Var(&c.maxFrameBytes, "ws-max-frame-bytes", 0, "largest WebSocket frame from a client (0: room for a max_payload message in base64)")
	fs.IntVar(&c.maxSubscriptions, "ws-max-subscriptions", 1000, "subscriptions per WebSocket session")
	fs.IntVar(&c.maxSessions, "ws-max-sessions-per-token", 10000, "open WebSocket sessions per token")
	fs.IntVar(&c.maxStreams, "max-streams-per-token", 10000, "open SSE and NDJSON subscription streams per token; one more is refused with 429")
	fs.DurationVar(&c.expiryNotice, "ws-expiry-notice", 30*time.Second, "how long before its token expires (an OIDC token's) a WebSocket session is sent {\"op\":\"status\",\"auth\":\"expiring\"}, time to refresh it")
	fs.IntVar(&c.maxInflight, "ws-max-inflight", 256, "requests and acknowledged publishes in flight per WebSocket session")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 15*time.Second, "bound on graceful shutdown")
	fs.StringVar(&c.debugListen, "debug-listen", "", "serve Go's pprof profiles at this address (e.g. 127.0.0.1:6060); off when empty. Never expose it publicly")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "serve HTTPS (HTTP/2 and HTTP/1.1) with this PEM certificate (chain); needs --tls-key; reloaded on SIGHUP")
	fs.StringVar(&c.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&c.trustedProxies, "trusted-proxies", "", "comma-separated CIDRs (or IPs) of reverse proxies whose Forwarded / X-Forwarded-For / X-Forwarded-Proto / X-Forwarded-Host headers are believed, for the client address (auth-failure limit, logs) and the same-origin check; everyone else's are ignored")
	fs.BoolVar(&c.version, "version", false, "print the version and exit")
	addOIDCFlags(fs, &c.oidc)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(stderr, fs)
			return nil, err
		}
		return nil, fmt.Errorf("%w (natsgate --help lists the flags)", err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q (flags start with --)", fs.Args())
	}
	return c, applyEnv(fs, c.set, getenv)
}

// applyEnv notes the flags given on the command line in set, then fills
// every other flag from its GATEWAY_* environment variable.
func applyEnv(fs *flag.FlagSet, set map[string]bool, getenv func(string) string) error {
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || envErr != nil || envName(f.Name) == "" {
			return
		}
		if v := getenv(envName(f.Name)); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = fmt.Errorf("%s: %w", envName(f.Name), err)
			}
			set[f.Name] = true
		}
	})
	return envErr
}

// printUsage writes --help: each flag with its GATEWAY_* twin and its
// default (strings quoted, numbers and durations as they are typed).
func printUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, `Usage: natsgate [flags]   (the binary go install builds is named gateway)

natsgate: HTTP and WebSocket gateway to a token-authenticated NATS server.
Every flag can also be set by the environment variable shown beside it.
natsgate callout --help: the auth callout service alone, for NATS servers of your own.

`)
	printFlags(w, fs)
}

// printFlags lists each flag with its GATEWAY_* twin and its default.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		env := envName(f.Name)
		if env == "" {
			env = "no environment twin"
		}
		fmt.Fprintf(w, "  --%s %s  (%s)\n    \t%s", f.Name, name, env, usage)
		switch {
		case f.DefValue == "" || f.DefValue == "0" || f.DefValue == "false":
		case name == "string":
			fmt.Fprintf(w, " (default %q)", f.DefValue)
		default:
			fmt.Fprintf(w, " (default %s)", f.DefValue)
		}
		fmt.Fprintln(w)
	})
}
