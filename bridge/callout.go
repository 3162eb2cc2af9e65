package bridge

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// Auth callout protocol constants (nats-server server/auth_callout.go).
const (
	// CalloutSubject is where nats-server sends authorization requests.
	CalloutSubject = "$SYS.REQ.USER.AUTH"
	// calloutAudience is the audience of a server's authorization request.
	calloutAudience = "nats-authorization-request"
	// calloutXKeyHeader carries the server's public xkey on an encrypted
	// request.
	calloutXKeyHeader = "Nats-Server-Xkey"
	// DefaultCalloutQueue is the queue group callout services share.
	DefaultCalloutQueue = "natsgate-callout"
)

// CalloutConfig configures an auth callout service. Zero values mean the
// documented defaults.
type CalloutConfig struct {
	// Issuer is the account key pair that signs responses and user JWTs;
	// its public key is the server's auth_callout issuer. Required.
	Issuer nkeys.KeyPair
	// Account is the account the authorized users are placed in (in
	// nats-server's configuration mode, the user JWT's audience). Default
	// "$G", the global account, where users without an account live.
	Account string
	// OIDC verifies bearer tokens that are JWTs. Nil: none are accepted.
	OIDC *OIDCVerifier
	// Tokens are static tokens accepted alongside, with their
	// permissions, as the tokens file has them (checked by SHA-256, or
	// bcrypt for hashed entries). Nil: none.
	Tokens []Token
	// XKey, when set, opens encrypted requests and seals responses: the
	// server's auth_callout { xkey } is its public key. Requests that
	// are not encrypted are then ignored.
	XKey nkeys.KeyPair
	// Queue is the queue group, so several instances share the requests.
	// Default DefaultCalloutQueue.
	Queue string
	// MaxConcurrent bounds the requests handled at once. Default 64.
	MaxConcurrent int
	// Logger receives a line per rejected token (never the token). Nil
	// discards them.
	Logger *slog.Logger
}

// CalloutStats counts the requests a callout service answered.
type CalloutStats struct {
	Accepted, Rejected uint64
}

// Callout is an auth callout service: it answers nats-server's
// authorization requests for clients presenting a token (the gateway's
// connections and native clients alike) with a NATS user JWT carrying
// the token's permissions and, for OIDC tokens, the token's expiry.
type Callout struct {
	cfg    CalloutConfig
	tokens *tokenAuth
	sub    *nats.Subscription
	cancel context.CancelFunc
	done   chan struct{}
	wg     sync.WaitGroup
	sem    chan struct{}

	sign jwt.SignFn // the issuer's signature, its key derived once

	accepted, rejected atomic.Uint64

	mu     sync.Mutex
	issued map[TokenKey]issuedUser
}

// issuedUser is what the service told NATS about a token.
type issuedUser struct {
	name    string
	expires time.Time // zero: no expiry
}

// maxIssued bounds the remembered users.
const maxIssued = 1 << 16

// StartCallout subscribes the service on nc, in queue group cfg.Queue,
// to the server's authorization requests. nc must belong to one of the
// server's auth_callout auth_users. Stop ends it.
func StartCallout(nc *nats.Conn, cfg CalloutConfig) (*Callout, error) {
	var tokens *tokenAuth
	if cfg.Tokens != nil {
		tokens = newTokenAuth(cfg.Tokens)
	}
	return startCallout(nc, cfg, tokens)
}

func startCallout(nc *nats.Conn, cfg CalloutConfig, tokens *tokenAuth) (*Callout, error) {
	if cfg.Issuer == nil {
		return nil, errors.New("callout: no issuer account key")
	}
	if pub, err := cfg.Issuer.PublicKey(); err != nil || !nkeys.IsValidPublicAccountKey(pub) {
		return nil, errors.New("callout: the issuer key must be an account key (its seed starts with SA)")
	}
	seed, err := cfg.Issuer.Seed()
	if err != nil {
		return nil, errors.New("callout: the issuer key pair has no seed")
	}
	_, raw, err := nkeys.DecodeSeed(seed)
	if err != nil {
		return nil, fmt.Errorf("callout: issuer seed: %w", err)
	}
	// nkeys derives the private key from the seed at every Sign; each
	// request signs two JWTs.
	priv := ed25519.NewKeyFromSeed(raw)
	if cfg.XKey != nil {
		if pub, err := cfg.XKey.PublicKey(); err != nil || !nkeys.IsValidPublicCurveKey(pub) {
			return nil, errors.New("callout: the xkey must be a curve key (its seed starts with SX)")
		}
	}
	if cfg.Account == "" {
		cfg.Account = "$G"
	}
	if cfg.Queue == "" {
		cfg.Queue = DefaultCalloutQueue
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 64
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	sub, err := nc.QueueSubscribeSync(CalloutSubject, cfg.Queue)
	if err != nil {
		return nil, fmt.Errorf("callout: subscribe: %w", err)
	}
	if err := nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("callout: subscribe: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Callout{
		sign:   func(_ string, data []byte) ([]byte, error) { return ed25519.Sign(priv, data), nil },
		cfg:    cfg,
		tokens: tokens,
		sub:    sub,
		cancel: cancel,
		done:   make(chan struct{}),
		sem:    make(chan struct{}, cfg.MaxConcurrent),
		issued: make(map[TokenKey]issuedUser),
	}
	go c.serve(ctx)
	return c, nil
}

// serve hands each request to a goroutine of its own, at most
// MaxConcurrent at once: a key set fetch for one token does not hold up
// the others.
func (c *Callout) serve(ctx context.Context) {
	defer close(c.done)
	for {
		m, err := c.sub.NextMsgWithContext(ctx)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
				c.cfg.Logger.Error("callout: receiving requests stopped", "err", err)
			}
			return
		}
		select {
		case c.sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		c.wg.Add(1)
		go func() {
			defer func() { <-c.sem; c.wg.Done() }()
			c.handle(m)
		}()
	}
}

// Stop unsubscribes and waits for the requests under way.
func (c *Callout) Stop() {
	_ = c.sub.Unsubscribe()
	c.cancel()
	<-c.done
	c.wg.Wait()
}

// Stats returns the service's counts.
func (c *Callout) Stats() CalloutStats {
	return CalloutStats{Accepted: c.accepted.Load(), Rejected: c.rejected.Load()}
}

// Issued returns the name the service gave the token with this key and
// the expiry of the NATS user it last issued for it (zero for none),
// expired or not. Expired entries go when the table is full.
func (c *Callout) Issued(key TokenKey) (name string, expires time.Time, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	u, ok := c.issued[key]
	return u.name, u.expires, ok
}

func (c *Callout) remember(key TokenKey, u issuedUser) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.issued) >= maxIssued {
		now := time.Now()
		for k, v := range c.issued {
			if !v.expires.IsZero() && now.After(v.expires) {
				delete(c.issued, k)
			}
		}
		for k := range c.issued {
			if len(c.issued) < maxIssued {
				break
			}
			delete(c.issued, k)
		}
	}
	c.issued[key] = u
}

// handle answers one authorization request. A request that is not a
// server's (bad signature, not signed by a server key, expired, not
// encrypted when it must be) gets no answer at all.
func (c *Callout) handle(m *nats.Msg) {
	data := m.Data
	var serverXKey string
	if c.cfg.XKey != nil {
		serverXKey = m.Header.Get(calloutXKeyHeader)
		if serverXKey == "" {
			c.cfg.Logger.Warn("callout: ignoring an unencrypted authorization request (the service has an xkey; set the same public xkey in the server's auth_callout)")
			return
		}
		var err error
		if data, err = c.cfg.XKey.Open(data, serverXKey); err != nil {
			c.cfg.Logger.Warn("callout: ignoring an authorization request that does not decrypt with the service's xkey", "err", err)
			return
		}
	}
	req, err := jwt.DecodeAuthorizationRequestClaims(string(data))
	if err != nil {
		c.cfg.Logger.Warn("callout: ignoring a malformed authorization request", "err", err)
		return
	}
	vr := jwt.CreateValidationResults()
	req.Validate(vr)
	if !nkeys.IsValidPublicServerKey(req.Issuer) || req.Audience != calloutAudience || len(vr.Errors()) > 0 {
		c.cfg.Logger.Warn("callout: ignoring an authorization request not signed by a server, or expired")
		return
	}
	deadline := time.Now().Add(2 * time.Second)
	if req.Expires > 0 {
		deadline = time.Unix(req.Expires, 0)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()

	userJWT, reason := c.authorize(ctx, req)
	resp := jwt.NewAuthorizationResponseClaims(req.UserNkey)
	resp.Audience = req.Server.ID
	if reason != nil {
		c.rejected.Add(1)
		resp.Error = "natsgate callout: token rejected: " + reason.Error()
	} else {
		c.accepted.Add(1)
		resp.Jwt = userJWT
	}
	out, err := resp.EncodeWithSigner(c.cfg.Issuer, c.sign)
	if err != nil {
		c.cfg.Logger.Error("callout: encoding the response", "err", err)
		return
	}
	body := []byte(out)
	if c.cfg.XKey != nil {
		if body, err = c.cfg.XKey.Seal(body, serverXKey); err != nil {
			c.cfg.Logger.Error("callout: encrypting the response", "err", err)
			return
		}
	}
	if err := m.Respond(body); err != nil {
		c.cfg.Logger.Warn("callout: answering", "err", err)
	}
}

// authorize decides on the request's token and returns the user JWT to
// issue, or the reason for refusing, safe to show (no part of the token).
func (c *Callout) authorize(ctx context.Context, req *jwt.AuthorizationRequestClaims) (string, error) {
	token := req.ConnectOptions.Token
	log := c.cfg.Logger.With("client_host", req.ClientInformation.Host, "client_name", req.ClientInformation.Name)
	if token == "" {
		log.Info("callout: connection without a token refused")
		return "", errors.New("no token")
	}
	key := KeyOf(token)
	log = log.With("token", key.String())
	var t *Token
	if c.tokens != nil {
		// Plain tokens first, then OIDC, then bcrypt: a JWT need not be
		// compared with every hashed entry.
		t = c.tokens.lookupPlain(token)
		if t == nil && (c.cfg.OIDC == nil || !looksLikeJWT(token)) {
			t = c.tokens.lookup(token)
		}
	}
	var u issuedUser
	var perms *Permissions
	switch {
	case t != nil:
		u.name, perms = t.Name, &Permissions{Publish: t.Publish, Subscribe: t.Subscribe}
	case c.cfg.OIDC != nil && looksLikeJWT(token):
		id, err := c.cfg.OIDC.Verify(ctx, token)
		if err != nil {
			if errors.Is(err, ErrBadPermissions) {
				log.Warn("callout: OIDC token refused: its permissions claim is not of the tokens file's shape", "sub", id.Subject, "err", err)
				return "", errors.New("bad permissions claim")
			}
			log.Info("callout: OIDC token refused", "reason", err)
			return "", err
		}
		u.name, u.expires, perms = displayName(id.Subject), id.Expires, id.Permissions
		if id.Default {
			log.Debug("callout: OIDC token without a permissions claim; default permissions apply", "sub", id.Subject)
		}
	default:
		log.Info("callout: unknown token refused")
		return "", errors.New("unknown token")
	}
	uc := jwt.NewUserClaims(req.UserNkey)
	uc.Audience = c.cfg.Account
	uc.Name = u.name
	if !u.expires.IsZero() {
		uc.Expires = u.expires.Unix()
	}
	perms.applyTo(&uc.Permissions)
	out, err := uc.EncodeWithSigner(c.cfg.Issuer, c.sign)
	if err != nil {
		log.Error("callout: encoding the user", "err", err)
		return "", errors.New("internal error")
	}
	c.remember(key, u)
	log.Debug("callout: token accepted", "name", u.name, "expires", u.expires)
	return out, nil
}

// applyTo sets NATS user permissions from p.
func (p *Permissions) applyTo(jp *jwt.Permissions) {
	if p == nil {
		return
	}
	if p.Publish != nil {
		jp.Pub.Allow.Add(p.Publish.Allow...)
		jp.Pub.Deny.Add(p.Publish.Deny...)
	}
	if p.Subscribe != nil {
		jp.Sub.Allow.Add(p.Subscribe.Allow...)
		jp.Sub.Deny.Add(p.Subscribe.Deny...)
	}
}

// looksLikeJWT reports whether a token has a JWS's compact form: three
// base64url parts, the first a JSON object ("eyJ" is `{"` encoded).
func looksLikeJWT(tok string) bool {
	return strings.HasPrefix(tok, "eyJ") && strings.Count(tok, ".") == 2
}

// lookupPlain finds a plain (not bcrypt) entry, or a bcrypt entry this
// process has already verified: no bcrypt comparison.
func (a *tokenAuth) lookupPlain(token string) *Token {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.findLocked(KeyOf(token))
}

// Expires reports when the NATS user behind this connection expires: the
// exp of its OIDC token, as the embedded server's callout service issued
// it. ok is false for a token without expiry (a static token) and with
// external servers, whose callout the gateway does not see.
func (c *Conn) Expires() (t time.Time, ok bool) {
	if c.pool.cfg.Server == nil || c.pool.cfg.Server.callout == nil {
		return time.Time{}, false
	}
	_, exp, ok := c.pool.cfg.Server.callout.Issued(c.key)
	return exp, ok && !exp.IsZero()
}

// calloutSetup holds the keys of the embedded server's callout: the
// issuer account that signs users and the service's own user.
type calloutSetup struct {
	issuer, user nkeys.KeyPair
}

// configureCallout sets the embedded server up for auth callout. The
// service's user is an nkey user (no password to leak or to warn about)
// in the system account, which is also the callout account: requests,
// which carry tokens, travel in an account no client can join, while
// authorized users land in the global account, where JetStream stays
// enabled. The issuer key exists only in this process's memory.
func configureCallout(opts *server.Options) (*calloutSetup, error) {
	issuer, err := nkeys.CreateAccount()
	if err != nil {
		return nil, fmt.Errorf("callout issuer key: %w", err)
	}
	user, err := nkeys.CreateUser()
	if err != nil {
		return nil, fmt.Errorf("callout user key: %w", err)
	}
	ipub, _ := issuer.PublicKey()
	upub, _ := user.PublicKey()
	name := opts.SystemAccount
	if name == "" {
		name = server.DEFAULT_SYSTEM_ACCOUNT
	}
	var sys *server.Account
	for _, a := range opts.Accounts {
		if a.Name == name {
			sys = a
		}
	}
	if sys == nil {
		sys = server.NewAccount(name)
		opts.Accounts = append(opts.Accounts, sys)
	}
	opts.SystemAccount = name
	opts.Nkeys = []*server.NkeyUser{{Nkey: upub, Account: sys}}
	opts.AuthCallout = &server.AuthCallout{Issuer: ipub, Account: name, AuthUsers: []string{upub}}
	return &calloutSetup{issuer: issuer, user: user}, nil
}

// startCallout connects the service in-process and starts it.
func (e *Embedded) startCallout(cs *calloutSetup, cfg CalloutConfig) error {
	upub, _ := cs.user.PublicKey()
	nc, err := nats.Connect("",
		nats.InProcessServer(inProcess{dial: e.s.InProcessConn}),
		nats.Name("natsgate-callout"),
		nats.Nkey(upub, cs.user.Sign),
		nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("callout service connection: %w", err)
	}
	c, err := startCallout(nc, cfg, e.auth)
	if err != nil {
		nc.Close()
		return err
	}
	e.callout, e.calloutNC = c, nc
	return nil
}

// CalloutStats returns the counts of the embedded server's callout
// service (zero without one).
func (e *Embedded) CalloutStats() CalloutStats {
	if e.callout == nil {
		return CalloutStats{}
	}
	return e.callout.Stats()
}

// notConnected is the error for an operation on a connection that is not
// connected right now: ErrUnavailable, unless the token's NATS user has
// expired, when NATS dropped the connection for that and will refuse it
// again (the pool learns so at the next reconnect): ErrUnauthorized.
func (c *Conn) notConnected() error {
	if exp, ok := c.Expires(); ok && !time.Now().Before(exp) {
		return fmt.Errorf("%w: the token expired", ErrUnauthorized)
	}
	return fmt.Errorf("%w: not connected to NATS", ErrUnavailable)
}
