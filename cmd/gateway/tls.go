package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"
)

// certificate is the gateway's TLS pair. Handshakes read it through
// tls.Config.GetCertificate, so a reload (SIGHUP) swaps the pair for new
// connections while open ones, HTTP/2 streams and WebSocket sessions
// included, keep theirs.
type certificate struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
}

// loadCertificate reads the pair; a missing file, a key that does not
// match the certificate, or no certificate at all is an error.
func loadCertificate(certFile, keyFile string) (*certificate, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	c := &certificate{certFile: certFile, keyFile: keyFile}
	pair, err := readPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	c.cur.Store(pair)
	return c, nil
}

func readPair(certFile, keyFile string) (*tls.Certificate, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS pair %s / %s: %w", certFile, keyFile, err)
	}
	return &pair, nil
}

// reload reads the files again and switches to them, or, if they do not
// make a valid pair, keeps serving the previous one.
func (c *certificate) reload(logger *slog.Logger) {
	pair, err := readPair(c.certFile, c.keyFile)
	if err != nil {
		logger.Error("TLS certificate reload failed; keeping the previous certificate", "cert", c.certFile, "key", c.keyFile, "err", err)
		return
	}
	c.cur.Store(pair)
	logger.Info("TLS certificate reloaded", append([]any{"cert", c.certFile}, describePair(pair)...)...)
}

func describePair(pair *tls.Certificate) []any {
	if pair.Leaf == nil {
		return nil
	}
	if time.Now().After(pair.Leaf.NotAfter) {
		return []any{"subject", pair.Leaf.Subject.String(), "not_after", pair.Leaf.NotAfter, "expired", true}
	}
	return []any{"subject", pair.Leaf.Subject.String(), "not_after", pair.Leaf.NotAfter}
}

func (c *certificate) get(*tls.ClientHelloInfo) (*tls.Certificate, error) { return c.cur.Load(), nil }

// tlsConfig serves the current pair, TLS 1.2 at least. http.Server adds
// "h2" and "http/1.1" to ALPN: browsers and Go clients use HTTP/2 for
// everything but WebSocket upgrades, which they make on an HTTP/1.1
// connection of their own (the server does not enable HTTP/2's extended
// CONNECT, RFC 8441, so no client tries a WebSocket over HTTP/2).
func (c *certificate) tlsConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: c.get}
}
