package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/natsgate/natsgate/bridge"
)

// calloutConfig is the command line of `gateway callout`.
type calloutConfig struct {
	natsURL      string
	natsUser     string
	natsPassword string
	natsCreds    string
	issuerSeed   string
	issuerFile   string
	xkeySeed     string
	xkeyFile     string
	account      string
	queue        string
	tokensFile   string
	logFormat    string
	logLevel     string
	oidc         oidcFlags

	set map[string]bool
}

func parseCalloutFlags(args []string, getenv func(string) string, stderr io.Writer) (*calloutConfig, error) {
	c := &calloutConfig{set: map[string]bool{}}
	fs := flag.NewFlagSet("natsgate callout", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&c.natsURL, "nats-url", "", "NATS servers (comma-separated) whose auth_callout this service answers (required)")
	fs.StringVar(&c.natsUser, "nats-user", "", "user the service connects as: one of the server's auth_callout auth_users")
	fs.StringVar(&c.natsPassword, "nats-password", "", "that user's password")
	fs.StringVar(&c.natsCreds, "nats-creds", "", "credentials file to connect with, instead of --nats-user (operator mode)")
	fs.StringVar(&c.issuerSeed, "issuer-seed", "", "seed (SA…) of the account nkey that signs users: the server's auth_callout issuer is its public key (prefer GATEWAY_ISSUER_SEED or --issuer-nkey-file to the command line)")
	fs.StringVar(&c.issuerFile, "issuer-nkey-file", "", "file holding that seed (nsc generate nkey --account, or nk -gen account)")
	fs.StringVar(&c.xkeySeed, "xkey-seed", "", "seed (SX…) of a curve key: requests are then encrypted, and the server's auth_callout xkey is its public key")
	fs.StringVar(&c.xkeyFile, "xkey-file", "", "file holding that seed (nk -gen curve)")
	fs.StringVar(&c.account, "user-account", "$G", "account the authorized users are placed in (server configuration mode: an account of the server's accounts {} block; $G is the default account)")
	fs.StringVar(&c.queue, "queue", bridge.DefaultCalloutQueue, "queue group, shared by every instance of this service")
	fs.StringVar(&c.tokensFile, "tokens-file", "", "static tokens accepted alongside OIDC tokens, in the gateway's tokens file format")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	addOIDCFlags(fs, &c.oidc)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stderr, `Usage: natsgate callout [flags]

Answers a NATS server's (or cluster's) auth_callout requests: OIDC access
tokens of --oidc-issuer, and the static tokens of --tokens-file, become NATS
users with the permissions their claim or entry gives. Run several: they
share the requests as a queue group. Every flag can also be set by the
environment variable shown beside it.

`)
			printFlags(stderr, fs)
			return nil, err
		}
		return nil, fmt.Errorf("%w (natsgate callout --help lists the flags)", err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q (flags start with --)", fs.Args())
	}
	return c, applyEnv(fs, c.set, getenv)
}

// runCallout is `gateway callout`: the auth callout service alone,
// connected to NATS servers configured with auth_callout, until ctx ends.
func runCallout(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, err := parseCalloutFlags(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	logger, err := newLogger(cfg.logFormat, cfg.logLevel, stderr)
	if err != nil {
		return err
	}
	if cfg.natsURL == "" {
		return errors.New("callout: --nats-url is required")
	}
	issuer, err := readSeed("issuer", cfg.issuerSeed, cfg.issuerFile, true)
	if err != nil {
		return err
	}
	xkey, err := readSeed("xkey", cfg.xkeySeed, cfg.xkeyFile, false)
	if err != nil {
		return err
	}
	var tokens []bridge.Token
	if cfg.tokensFile != "" {
		if tokens, err = readTokensFile(cfg.tokensFile); err != nil {
			return err
		}
	}
	verifier, err := cfg.oidc.verifier(ctx, cfg.set)
	if err != nil {
		return err
	}
	if verifier == nil && tokens == nil {
		return errors.New("callout: nothing to accept: give --oidc-issuer (and --oidc-audience), --tokens-file, or both")
	}
	opts := []nats.Option{
		nats.Name("natsgate-callout"),
		nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			logger.Warn("callout: disconnected from NATS; reconnecting", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			logger.Info("callout: reconnected", "server", nc.ConnectedUrlRedacted())
		}),
	}
	switch {
	case cfg.natsCreds != "" && cfg.natsUser != "":
		return errors.New("callout: give --nats-creds or --nats-user, not both")
	case cfg.natsCreds != "":
		opts = append(opts, nats.UserCredentials(cfg.natsCreds))
	case cfg.natsUser != "":
		opts = append(opts, nats.UserInfo(cfg.natsUser, cfg.natsPassword))
	}
	nc, err := nats.Connect(cfg.natsURL, opts...)
	if err != nil {
		return fmt.Errorf("callout: connecting to %s: %w", cfg.natsURL, err)
	}
	defer nc.Close()
	c, err := bridge.StartCallout(nc, bridge.CalloutConfig{
		Issuer:  issuer,
		Account: cfg.account,
		OIDC:    verifier,
		Tokens:  tokens,
		XKey:    xkey,
		Queue:   cfg.queue,
		Logger:  logger.With("component", "callout"),
	})
	if err != nil {
		return err
	}
	pub, _ := issuer.PublicKey()
	attrs := []any{"nats", nc.ConnectedUrlRedacted(), "issuer", pub, "account", cfg.account, "queue", cfg.queue,
		"oidc_issuer", cfg.oidc.issuer, "static_tokens", len(tokens), "pid", os.Getpid()}
	if xkey != nil {
		xpub, _ := xkey.PublicKey()
		attrs = append(attrs, "xkey", xpub)
	}
	logger.Info("natsgate callout serving", attrs...)
	<-ctx.Done()
	logger.Info("callout: shutting down")
	c.Stop()
	if err := nc.Drain(); err != nil {
		nc.Close()
	}
	st := c.Stats()
	logger.Info("callout: stopped", "accepted", st.Accepted, "rejected", st.Rejected)
	return nil
}

// readSeed reads an nkey seed from a flag's value or a file (never both).
func readSeed(what, seed, file string, required bool) (nkeys.KeyPair, error) {
	switch {
	case seed != "" && file != "":
		return nil, fmt.Errorf("callout: give the %s seed or its file, not both", what)
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("callout: %s seed: %w", what, err)
		}
		seed = string(b)
	case seed == "" && !required:
		return nil, nil
	case seed == "":
		return nil, fmt.Errorf("callout: the %s seed is required (--issuer-seed, GATEWAY_ISSUER_SEED or --issuer-nkey-file)", what)
	}
	kp, err := nkeys.FromSeed([]byte(firstSeedLine(seed)))
	if err != nil {
		return nil, fmt.Errorf("callout: the %s seed does not parse as an nkey seed", what)
	}
	return kp, nil
}

// firstSeedLine finds the seed in a file's text: the first line that
// looks like one (nk and nsc write seeds alone or with comments).
func firstSeedLine(s string) string {
	for _, line := range strings.Split(s, "\n") {
		if line = strings.TrimSpace(line); strings.HasPrefix(line, "S") {
			return line
		}
	}
	return strings.TrimSpace(s)
}
