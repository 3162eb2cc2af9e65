package bridge

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// maxInfoLine bounds the INFO line a tapDialer reads from a server.
const maxInfoLine = 1 << 20

// tapDialer dials external NATS servers for nats.go (nats.SetCustomDialer)
// and returns connections whose reads pass through an errTap. For the tap
// to read the protocol rather than ciphertext, the dialer performs the TLS
// handshake itself, exactly when nats.go would have (after the server's
// INFO line, when the server requires TLS, or offers it and a tls:// URL
// asked for it), and tells nats.go to skip its own (SkipTLSHandshake).
// nats.go then runs over the plaintext side of the TLS connection.
//
// nats.go is given nats.SkipHostLookup so that Dial sees host names, not
// addresses, and can verify the server's certificate against them; Dial
// resolves them itself and tries the addresses in random order, as nats.go
// would have.
type tapDialer struct {
	timeout  time.Duration
	tls      *tls.Config     // nil: the system's roots
	explicit map[string]bool // host:port of the configured URLs
	perms    *permissionLog

	mu sync.Mutex
	// secure: TLS whenever the server offers it (a tls:// URL, or a server
	// that required it once: nats.go's Options.Secure sticks the same way).
	secure bool
	// name is the host name of the last server reached by name over TLS:
	// servers the cluster announces by address are verified against it,
	// as nats.go does (its Server.tlsName).
	name string
}

// newTapDialer returns a dialer for the servers of a nats.go URL list.
// WebSocket URLs are refused: the gateway must read the NATS protocol to
// tell which publishes the server refused, and does not decode WebSocket
// frames.
func newTapDialer(urls string, timeout time.Duration, tlsConfig *tls.Config, perms *permissionLog) (*tapDialer, error) {
	d := &tapDialer{timeout: timeout, tls: tlsConfig, explicit: map[string]bool{}, perms: perms}
	for _, s := range strings.Split(urls, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !strings.Contains(s, "://") {
			s = "nats://" + s
		}
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("bad NATS URL: %w", err)
		}
		switch strings.ToLower(u.Scheme) {
		case "nats":
		case "tls":
			d.secure = true
		case "ws", "wss":
			return nil, fmt.Errorf("NATS URL %s: ws:// and wss:// are not supported; use nats:// or tls://", u.Redacted())
		default:
			return nil, fmt.Errorf("NATS URL %s: unknown scheme %q", u.Redacted(), u.Scheme)
		}
		port := u.Port()
		if port == "" {
			port = "4222"
		}
		d.explicit[net.JoinHostPort(u.Hostname(), port)] = true
	}
	return d, nil
}

// SkipTLSHandshake tells nats.go that Dial's connections are already as
// secure as they will be.
func (d *tapDialer) SkipTLSHandshake() bool { return true }

// Dial connects to addr, reads the server's INFO line, performs the TLS
// handshake if nats.go would, and returns a connection that replays the
// INFO line to nats.go.
func (d *tapDialer) Dial(network, addr string) (net.Conn, error) {
	deadline := time.Now().Add(d.timeout)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	raw, err := d.dialHost(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	conn, prefix, err := d.handshake(ctx, raw, addr, deadline)
	if err != nil {
		raw.Close()
		return nil, err
	}
	return &tapConn{Conn: conn, prefix: prefix, tap: newErrTap(d.perms)}, nil
}

// dialHost dials a host name's addresses in random order (nats.go's own
// lookup shuffles them too, to spread clients over a cluster behind one
// name), sharing the timeout among them.
func (d *tapDialer) dialHost(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	hosts := []string{addr}
	if net.ParseIP(host) == nil {
		if ips, err := net.DefaultResolver.LookupHost(ctx, host); err == nil && len(ips) > 0 {
			hosts = hosts[:0]
			for _, ip := range ips {
				hosts = append(hosts, net.JoinHostPort(ip, port))
			}
			rand.Shuffle(len(hosts), func(i, j int) { hosts[i], hosts[j] = hosts[j], hosts[i] })
		}
	}
	dl := net.Dialer{Timeout: d.timeout / time.Duration(len(hosts))}
	for _, h := range hosts {
		var c net.Conn
		if c, err = dl.DialContext(ctx, network, h); err == nil {
			return c, nil
		}
	}
	return nil, err
}

func (d *tapDialer) handshake(ctx context.Context, raw net.Conn, addr string, deadline time.Time) (net.Conn, []byte, error) {
	_ = raw.SetDeadline(deadline)
	br := bufio.NewReaderSize(raw, 4096)
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, nil, err
		}
		if len(line) > maxInfoLine {
			return nil, nil, fmt.Errorf("%s sent a first line of over %d bytes", addr, maxInfoLine)
		}
	}
	ahead, _ := br.Peek(br.Buffered())
	var info struct {
		TLSRequired  bool `json:"tls_required"`
		TLSAvailable bool `json:"tls_available"`
	}
	if rest, ok := bytes.CutPrefix(line, []byte("INFO ")); ok {
		// A bad INFO is nats.go's to report; here it just means no TLS.
		_ = json.Unmarshal(rest, &info)
	}
	d.mu.Lock()
	useTLS := info.TLSRequired || (d.secure && info.TLSAvailable)
	d.mu.Unlock()
	if !useTLS {
		// Not even when the URL asked for it: nats.go then sees the INFO
		// and fails with ErrSecureConnWanted.
		_ = raw.SetDeadline(time.Time{})
		return raw, append(line, ahead...), nil
	}
	if len(ahead) > 0 {
		return nil, nil, fmt.Errorf("%w: %s sent data before the TLS handshake", nats.ErrTLS, addr)
	}
	cfg := &tls.Config{}
	if d.tls != nil {
		cfg = d.tls.Clone()
	}
	host, _, _ := net.SplitHostPort(addr)
	if cfg.ServerName == "" {
		cfg.ServerName = d.serverName(host, addr)
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", nats.ErrTLS, err)
	}
	_ = raw.SetDeadline(time.Time{})
	d.mu.Lock()
	d.secure = true
	if net.ParseIP(host) == nil {
		d.name = host
	}
	d.mu.Unlock()
	return tc, line, nil
}

// serverName is the name the server's certificate must carry.
func (d *tapDialer) serverName(host, addr string) string {
	if net.ParseIP(host) == nil || d.explicit[addr] {
		return host
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.name != "" {
		return d.name
	}
	return host
}
