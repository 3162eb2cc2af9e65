package bridge

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Config configures a Pool. Zero values mean the documented defaults.
type Config struct {
	// URL lists external NATS servers, comma-separated
	// ("nats://a:4222,nats://b:4222"). Ignored when Server is set.
	// nats:// and tls:// URLs are accepted; TLS is used when the server
	// requires it or the URL is tls://, and the certificate is verified
	// against the URL's host name and the system's roots. ws:// and wss://
	// are refused: the gateway reads the NATS protocol on its connections
	// to learn which publishes the server refused (errTap).
	URL string
	// Server is the embedded server, reached in-process.
	Server *Embedded
	// Name is the NATS connection name the server shows. Default "natsgate".
	Name string
	// IdleTimeout closes a token's connection once nothing has used it for
	// this long. Default 2 minutes.
	IdleTimeout time.Duration
	// MaxTokens bounds the distinct tokens with an open connection. When
	// every one is in use, a new token gets ErrTooManyTokens; idle ones are
	// closed to make room. Default 20000 (an idle one costs the gateway
	// about 90 KiB of memory with the embedded server, its side included).
	MaxTokens int
	// RejectTTL is how long a token the server rejected is refused without
	// asking the server again. Default 5 s.
	RejectTTL time.Duration
	// MaxRejects bounds the remembered rejections. Default 16384.
	MaxRejects int
	// MaxDialing bounds concurrent connection attempts; more wait up to
	// ConnectTimeout, then get ErrUnavailable. Default 32.
	MaxDialing int
	// ConnectTimeout bounds one connection attempt. Default 5 s.
	ConnectTimeout time.Duration
	// ConfirmTimeout bounds the flush round trip that confirms publishes
	// and subscriptions. Default 5 s.
	ConfirmTimeout time.Duration
	// ReconnectWait is the pause between reconnection attempts after NATS
	// goes away. Default 500 ms (with jitter).
	ReconnectWait time.Duration
	// PendingMsgs and PendingBytes bound what nats.go buffers for each
	// subscription while the gateway's callback catches up; past them it
	// drops messages and the subscription's clients are told. Defaults
	// 65536 messages and 8 MiB (nats.go's own are 512Ki and 64 MiB).
	PendingMsgs  int
	PendingBytes int
	// StoredInFlight bounds the messages of one stored batch publish
	// (Conn.PublishStoredBatch) awaiting their stream's acknowledgement
	// at once. Default 256.
	StoredInFlight int
	// Logger receives connection events. Nil discards them.
	Logger *slog.Logger

	// tlsConfig verifies external servers' certificates; nil means the
	// system's roots. Tests set it.
	tlsConfig *tls.Config
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	defInt := func(d *int, v int) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.Name == "" {
		c.Name = "natsgate"
	}
	def(&c.IdleTimeout, 2*time.Minute)
	def(&c.RejectTTL, 5*time.Second)
	def(&c.ConnectTimeout, 5*time.Second)
	def(&c.ConfirmTimeout, 5*time.Second)
	def(&c.ReconnectWait, 500*time.Millisecond)
	defInt(&c.MaxTokens, 20000)
	defInt(&c.MaxRejects, 16384)
	defInt(&c.MaxDialing, 32)
	defInt(&c.PendingMsgs, 65536)
	defInt(&c.PendingBytes, 8<<20)
	defInt(&c.StoredInFlight, 256)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Pool holds one NATS connection per distinct token, keyed by the token's
// SHA-256, shared by every request and session presenting that token and
// never by another token. Connections close after IdleTimeout unused.
type Pool struct {
	cfg     Config
	dialSem chan struct{}
	stop    chan struct{}
	reaped  chan struct{}

	mu      sync.RWMutex
	conns   map[TokenKey]*Conn
	rejects map[TokenKey]time.Time
	closed  bool

	probeMu  sync.Mutex
	probeAt  time.Time
	probeErr error
}

// NewPool returns a pool and starts its idle reaper; Close stops it.
func NewPool(cfg Config) *Pool {
	cfg.setDefaults()
	p := &Pool{
		cfg:     cfg,
		dialSem: make(chan struct{}, cfg.MaxDialing),
		stop:    make(chan struct{}),
		reaped:  make(chan struct{}),
		conns:   make(map[TokenKey]*Conn),
		rejects: make(map[TokenKey]time.Time),
	}
	go p.reap()
	return p
}

// Acquire returns the connection for token, connecting on first use, with
// one more reference on it; the caller must Release it. A token the server
// rejects gives ErrUnauthorized, and is refused again for RejectTTL without
// a new connection attempt.
func (p *Pool) Acquire(ctx context.Context, token string) (*Conn, error) {
	if token == "" {
		return nil, fmt.Errorf("%w: no token", ErrUnauthorized)
	}
	key := KeyOf(token)
	if c := p.acquireHeld(key); c != nil {
		return c, nil
	}
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, fmt.Errorf("%w: the gateway is shutting down", ErrUnavailable)
		}
		if c := p.conns[key]; c != nil {
			if c.ready.Load() {
				c.refs.Add(1)
				p.mu.Unlock()
				return c, nil
			}
			p.mu.Unlock()
			select {
			case <-c.dialed:
				if c.dialErr != nil {
					return nil, c.dialErr
				}
				continue
			case <-ctx.Done():
				return nil, fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
			}
		}
		if until, ok := p.rejects[key]; ok {
			if time.Now().Before(until) {
				p.mu.Unlock()
				return nil, fmt.Errorf("%w (remembered)", ErrUnauthorized)
			}
			delete(p.rejects, key)
		}
		if len(p.conns) >= p.cfg.MaxTokens && !p.evictIdleLocked() {
			p.mu.Unlock()
			return nil, fmt.Errorf("%w (limit %d)", ErrTooManyTokens, p.cfg.MaxTokens)
		}
		c := newConn(p, key)
		p.conns[key] = c
		p.mu.Unlock()

		nc, err := p.dial(ctx, token, c)
		p.mu.Lock()
		if c.revoked.Load() {
			// A tokens-file reload removed or changed this token while it
			// was connecting (Forget): whatever the server decided then,
			// start over, to be judged by the new tokens.
			delete(p.conns, key)
			c.removed = true
			close(c.dialed) // waiters start over too (dialErr is nil)
			c.nc = nc
			p.mu.Unlock()
			if nc != nil {
				nc.Close()
			}
			continue
		}
		if err != nil {
			delete(p.conns, key)
			if errors.Is(err, ErrUnauthorized) {
				p.rememberRejectLocked(key)
			}
			c.dialErr = err
			close(c.dialed)
			p.mu.Unlock()
			p.cfg.Logger.Info("nats connect failed", "token", c.name, "err", err)
			return nil, err
		}
		c.nc = nc
		c.name = p.tokenName(key) // known once the server has checked the token
		c.refs.Store(1)
		c.ready.Store(true)
		close(c.dialed)
		p.mu.Unlock()
		p.cfg.Logger.Debug("nats connected", "token", c.name, "server", nc.ConnectedUrlRedacted())
		return c, nil
	}
}

// AcquireHeld is Acquire for a token whose connection the pool already
// holds, ready: it returns that connection with one more reference, or
// nil, and never connects. A held connection is one NATS accepted (a
// token removed by a reload is forgotten), so the edge need not rate-limit
// it.
func (p *Pool) AcquireHeld(token string) *Conn {
	if token == "" {
		return nil
	}
	return p.acquireHeld(KeyOf(token))
}

// acquireHeld is the common case of Acquire: the token's connection
// exists. A read lock lets concurrent requests of any token through
// together.
func (p *Pool) acquireHeld(key TokenKey) *Conn {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if c := p.conns[key]; c != nil && !p.closed && c.ready.Load() {
		c.refs.Add(1)
		return c
	}
	return nil
}

func (p *Pool) tokenName(key TokenKey) string {
	if p.cfg.Server != nil {
		if name, ok := p.cfg.Server.TokenName(key); ok {
			return name
		}
	}
	return key.String()
}

func (p *Pool) dial(ctx context.Context, token string, c *Conn) (*nats.Conn, error) {
	wait := time.NewTimer(p.cfg.ConnectTimeout)
	defer wait.Stop()
	select {
	case p.dialSem <- struct{}{}:
		defer func() { <-p.dialSem }()
	case <-wait.C:
		return nil, fmt.Errorf("%w: too many NATS connection attempts under way", ErrUnavailable)
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
	}
	opts := []nats.Option{
		nats.Name(p.cfg.Name),
		nats.Token(token),
		nats.Timeout(p.cfg.ConnectTimeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(p.cfg.ReconnectWait),
		nats.ReconnectJitter(p.cfg.ReconnectWait/2, p.cfg.ReconnectWait),
		// No buffering while reconnecting: a publish NATS cannot take now
		// fails now, and the client hears 503 instead of a 204 for a
		// message that may never arrive.
		nats.ReconnectBufSize(-1),
		nats.ErrorHandler(c.onAsyncError),
		nats.DisconnectErrHandler(func(*nats.Conn, error) { c.notify(Disconnected) }),
		nats.ReconnectHandler(func(*nats.Conn) { c.notify(Reconnected) }),
		nats.ClosedHandler(func(*nats.Conn) { p.onClosed(c) }),
	}
	// Every connection's reads pass through an errTap, which records the
	// permission violations the server reports (see errTap).
	servers := ""
	if p.cfg.Server != nil {
		opts = append(opts, nats.InProcessServer(inProcess{dial: p.cfg.Server.s.InProcessConn, perms: &c.perms}))
	} else {
		d, err := newTapDialer(p.cfg.URL, p.cfg.ConnectTimeout, p.cfg.tlsConfig, &c.perms)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		servers = p.cfg.URL
		opts = append(opts, nats.SetCustomDialer(d), nats.SkipHostLookup())
	}
	nc, err := nats.Connect(servers, opts...)
	switch {
	case err == nil:
		return nc, nil
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked):
		return nil, fmt.Errorf("%w: %v", ErrUnauthorized, err)
	case p.cfg.Server == nil && errors.Is(err, nats.ErrNoServers):
		// nats.go says only "no servers available"; Ready's probe says
		// why (connection refused, no such host), as /readyz does.
		if cause := p.Ready(ctx); cause != nil {
			return nil, cause
		}
	}
	return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
}

func (p *Pool) rememberRejectLocked(key TokenKey) {
	now := time.Now()
	if len(p.rejects) >= p.cfg.MaxRejects {
		for k, until := range p.rejects {
			if now.After(until) {
				delete(p.rejects, k)
			}
		}
		for k := range p.rejects {
			if len(p.rejects) < p.cfg.MaxRejects {
				break
			}
			delete(p.rejects, k)
		}
	}
	p.rejects[key] = now.Add(p.cfg.RejectTTL)
}

// evictIdleLocked closes the longest-idle unused connection, if any.
func (p *Pool) evictIdleLocked() bool {
	var victim *Conn
	for _, c := range p.conns {
		if c.refs.Load() == 0 && c.ready.Load() && (victim == nil || c.idleSince.Load() < victim.idleSince.Load()) {
			victim = c
		}
	}
	if victim == nil {
		return false
	}
	delete(p.conns, victim.key)
	victim.removed = true
	go victim.nc.Close()
	return true
}

func (p *Pool) release(c *Conn) {
	if c.refs.Add(-1) == 0 {
		c.idleSince.Store(time.Now().UnixNano())
	}
}

// onClosed forgets a connection NATS closed for good (a revoked token,
// or the pool closing it), so the next Acquire connects afresh.
func (p *Pool) onClosed(c *Conn) {
	p.mu.Lock()
	if p.conns[c.key] == c {
		delete(p.conns, c.key)
	}
	c.removed = true
	p.mu.Unlock()
	// Only an authentication error explains the close: any other last
	// error (a permissions violation minutes ago) is unrelated to it.
	switch reason := c.CloseReason(); reason {
	case ReasonTokenRejected, ReasonTokenExpired:
		p.cfg.Logger.Info("nats connection closed", "token", c.name, "reason", reason, "err", c.nc.LastError())
	case ReasonTokenRevoked:
		p.cfg.Logger.Info("nats connection closed", "token", c.name, "reason", reason)
	}
	c.notify(Closed)
}

// Forget closes the connections of the given tokens (after a tokens-file
// reload removed or changed them); their users see the connection close.
// A connection still being made is marked, and Acquire then connects
// afresh, under the new tokens, instead of handing it out.
func (p *Pool) Forget(keys ...TokenKey) {
	p.mu.Lock()
	var victims []*Conn
	for _, k := range keys {
		c := p.conns[k]
		switch {
		case c == nil:
		case !c.ready.Load():
			c.revoked.Store(true)
		default:
			delete(p.conns, k)
			c.removed = true
			c.revoked.Store(true)
			victims = append(victims, c)
		}
	}
	p.mu.Unlock()
	for _, c := range victims {
		c.nc.Close()
	}
}

func (p *Pool) reap() {
	defer close(p.reaped)
	tick := time.NewTicker(min(p.cfg.IdleTimeout/4, 10*time.Second))
	defer tick.Stop()
	for {
		select {
		case <-p.stop:
			return
		case now := <-tick.C:
			p.mu.Lock()
			var idle []*Conn
			for k, c := range p.conns {
				if c.refs.Load() == 0 && c.ready.Load() && now.UnixNano()-c.idleSince.Load() >= int64(p.cfg.IdleTimeout) {
					delete(p.conns, k)
					c.removed = true
					idle = append(idle, c)
				}
			}
			for k, until := range p.rejects {
				if now.After(until) {
					delete(p.rejects, k)
				}
			}
			p.mu.Unlock()
			for _, c := range idle {
				p.cfg.Logger.Debug("closing idle nats connection", "token", c.name)
				c.nc.Close()
			}
		}
	}
}

// Stats describes the pool for metrics and tests.
type Stats struct {
	Conns int // connections held, in use or idle
	InUse int // connections with at least one user
}

// Stats returns the pool's current figures.
func (p *Pool) Stats() Stats {
	p.mu.RLock()
	defer p.mu.RUnlock()
	var s Stats
	for _, c := range p.conns {
		if c.ready.Load() {
			s.Conns++
			if c.refs.Load() > 0 {
				s.InUse++
			}
		}
	}
	return s
}

// Ready reports whether NATS is usable: the embedded server is running,
// or, for external servers, a pooled connection is connected or a server
// answers with its INFO line (checked at most once a second).
func (p *Pool) Ready(ctx context.Context) error {
	p.mu.RLock()
	closed := p.closed
	var held, connected int
	for _, c := range p.conns {
		if c.ready.Load() {
			held++
			if c.nc.IsConnected() {
				connected++
			}
		}
	}
	p.mu.RUnlock()
	switch {
	case closed:
		return fmt.Errorf("%w: the gateway is shutting down", ErrUnavailable)
	case p.cfg.Server != nil:
		if !p.cfg.Server.Ready() {
			return fmt.Errorf("%w: the embedded nats-server is not running", ErrUnavailable)
		}
		return nil
	case connected > 0:
		return nil
	}
	p.probeMu.Lock()
	defer p.probeMu.Unlock()
	if time.Since(p.probeAt) < time.Second {
		return p.probeErr
	}
	p.probeErr = probe(ctx, p.cfg.URL)
	p.probeAt = time.Now()
	return p.probeErr
}

// probe dials the servers in a NATS URL list until one sends its INFO line.
func probe(ctx context.Context, urls string) error {
	var last error
	for _, u := range strings.Split(urls, ",") {
		addr, err := hostPort(strings.TrimSpace(u))
		if err != nil {
			last = err
			continue
		}
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		cancel()
		if err != nil {
			last = err
			continue
		}
		_ = c.SetDeadline(time.Now().Add(time.Second))
		line, err := bufio.NewReaderSize(c, 4096).ReadSlice('\n')
		c.Close()
		if err == nil && strings.HasPrefix(string(line), "INFO ") {
			return nil
		}
		last = fmt.Errorf("%s did not answer as a NATS server", addr)
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, last)
}

func hostPort(u string) (string, error) {
	if !strings.Contains(u, "://") {
		u = "nats://" + u
	}
	pu, err := url.Parse(u)
	if err != nil {
		return "", fmt.Errorf("bad NATS URL: %w", err)
	}
	if pu.Port() == "" {
		return net.JoinHostPort(pu.Hostname(), "4222"), nil
	}
	return pu.Host, nil
}

// Close ends JetStream subscriptions (waiting, within ctx and
// ConfirmTimeout, for their consumers to be removed), drains every
// connection (subscriptions stop, pending publishes are flushed) and
// waits until they are closed or ctx ends, then closes what is left.
// Acquire fails afterwards.
func (p *Pool) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	var all []*Conn
	for _, c := range p.conns {
		if c.ready.Load() {
			all = append(all, c)
		}
	}
	p.mu.Unlock()
	close(p.stop)
	<-p.reaped
	// JetStream subscriptions first: their consumers are removed through
	// the connections about to drain.
	var wg sync.WaitGroup
	for _, c := range all {
		wg.Go(func() { c.endStreams(ctx) })
	}
	wg.Wait()
	for _, c := range all {
		if err := c.nc.Drain(); err != nil {
			c.nc.Close()
		}
	}
	for _, c := range all {
		select {
		case <-c.done:
		case <-ctx.Done():
			for _, c := range all {
				c.nc.Close()
			}
			return fmt.Errorf("draining NATS connections: %w", ctx.Err())
		}
	}
	return nil
}
