package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// testPair writes a self-signed certificate for 127.0.0.1 and its key
// under dir, named name.crt and name.key, and returns the certificate.
func testPair(t *testing.T, dir, name string) (certFile, keyFile string, cert *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "natsgate test " + name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ = x509.ParseCertificate(der)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "PRIVATE KEY", keyDER)
	return certFile, keyFile, cert
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// tlsClient trusts certs; h1only offers only http/1.1 in ALPN, as a
// WebSocket client forcing HTTP/1.1 does.
func tlsClient(h1only bool, certs ...*x509.Certificate) *http.Client {
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: !h1only}
	if h1only {
		tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	}
	return &http.Client{Transport: tr}
}

func bearerGet(t *testing.T, c *http.Client, url, token string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp
}

func bearerPost(t *testing.T, c *http.Client, url, token, body string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// sseLines reads an SSE body's lines on a goroutine.
func sseLines(resp *http.Response) <-chan string {
	lines := make(chan string, 64)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return lines
}

func waitLine(t *testing.T, lines <-chan string, want string) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the stream ended before %q", want)
			}
			if strings.Contains(l, want) {
				return
			}
		case <-timeout:
			t.Fatalf("no %q on the stream within 5s", want)
		}
	}
}

func TestTLSServesHTTP2AndWebSocketOverHTTP1(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, cert := testPair(t, dir, "a")
	s := start(t, nil, "--token", "t", "--tls-cert", certFile, "--tls-key", keyFile,
		"--read-header-timeout", "200ms", "--body-timeout", "300ms")
	if !strings.HasPrefix(s.base, "https://") || !strings.Contains(s.stdout.String(), s.base+"/v1/publish/demo.greeting") {
		t.Fatalf("the banner does not show the https URL:\n%s", s.stdout)
	}
	h2 := tlsClient(false, cert)

	// A GET is HTTP/2.
	resp := bearerGet(t, h2, s.base+"/healthz", "")
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Fatalf("GET /healthz over TLS: %d %s, want 200 over HTTP/2", resp.StatusCode, resp.Proto)
	}
	// ALPN offers h2 and http/1.1, as a browser sees it.
	for _, proto := range []string{"h2", "http/1.1"} {
		conn, err := tls.Dial("tcp", strings.TrimPrefix(s.base, "https://"), &tls.Config{RootCAs: h2.Transport.(*http.Transport).TLSClientConfig.RootCAs, NextProtos: []string{proto}})
		if err != nil {
			t.Fatalf("TLS dial offering %s: %v", proto, err)
		}
		if got := conn.ConnectionState().NegotiatedProtocol; got != proto {
			t.Errorf("ALPN offering only %s negotiated %q", proto, got)
		}
		conn.Close()
	}

	// SSE over HTTP/2 outlives the read timeouts and carries messages.
	sse := bearerGet(t, h2, s.base+"/v1/subscribe/tls.demo", "t")
	defer sse.Body.Close()
	if sse.StatusCode != 200 || sse.ProtoMajor != 2 {
		t.Fatalf("SSE over TLS: %d %s, want 200 over HTTP/2", sse.StatusCode, sse.Proto)
	}
	lines := sseLines(sse)
	waitLine(t, lines, ": subscribed")
	time.Sleep(time.Second)
	if code := bearerPost(t, h2, s.base+"/v1/publish/tls.demo", "t", "over h2"); code != 204 {
		t.Fatalf("publish over HTTP/2: %d", code)
	}
	waitLine(t, lines, `"data":"over h2"`)

	// wss://: with the HTTP/2 client (Go dials the upgrade on an HTTP/1.1
	// connection of its own) and with a client that offers only http/1.1.
	wss := "wss://" + strings.TrimPrefix(s.base, "https://") + "/v1/ws"
	for name, c := range map[string]*http.Client{"h2-capable": h2, "http/1.1 only": tlsClient(true, cert)} {
		ws, resp, err := websocket.Dial(context.Background(), wss, &websocket.DialOptions{
			HTTPClient: c, HTTPHeader: http.Header{"Authorization": {"Bearer t"}}})
		if err != nil {
			t.Fatalf("wss:// with the %s client: %v %v", name, err, resp)
		}
		if _, b, err := ws.Read(context.Background()); err != nil || !strings.Contains(string(b), `"op":"connected"`) {
			t.Fatalf("wss:// with the %s client: %s %v", name, b, err)
		}
		ws.Write(context.Background(), websocket.MessageText, []byte(`{"op":"sub","sid":"s1","subject":"tls.demo"}`))
		if _, b, err := ws.Read(context.Background()); err != nil || !strings.Contains(string(b), `"op":"ok"`) {
			t.Fatalf("wss:// sub: %s %v", b, err)
		}
		ws.Write(context.Background(), websocket.MessageText, []byte(`{"op":"pub","subject":"tls.demo","data":"over wss"}`))
		for {
			_, b, err := ws.Read(context.Background())
			if err != nil {
				t.Fatalf("wss:// session with the %s client ended: %v", name, err)
			}
			if strings.Contains(string(b), `"data":"over wss"`) {
				break
			}
		}
		ws.Close(websocket.StatusNormalClosure, "")
	}
	// Plain HTTP on the TLS port is refused.
	if resp, err := http.Get("http://" + strings.TrimPrefix(s.base, "https://") + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP served on the TLS listener")
		}
	}
}

func servedCert(t *testing.T, addr string, trusted ...*x509.Certificate) *x509.Certificate {
	t.Helper()
	pool := x509.NewCertPool()
	for _, c := range trusted {
		pool.AddCert(c)
	}
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// TestSIGHUPReloadsTLSPairAndTokens: one SIGHUP reloads both the tokens
// file and the TLS pair; open connections are kept; new connections get
// the new certificate; a bad pair is refused and the previous one kept.
func TestSIGHUPReloadsTLSPairAndTokens(t *testing.T) {
	dir := t.TempDir()
	aCert, aKey, a := testPair(t, dir, "a")
	bCert, bKey, b := testPair(t, dir, "b")
	certFile, keyFile := filepath.Join(dir, "serve.crt"), filepath.Join(dir, "serve.key")
	copyFile(t, aCert, certFile)
	copyFile(t, aKey, keyFile)
	tokens := filepath.Join(dir, "tokens.json")
	if err := os.WriteFile(tokens, []byte(`{"tokens":[{"name":"one","token":"t1"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	s := start(t, nil, "--tokens-file", tokens, "--tls-cert", certFile, "--tls-key", keyFile)
	addr := strings.TrimPrefix(s.base, "https://")
	if got := servedCert(t, addr, a); !got.Equal(a) {
		t.Fatal("not serving the first certificate")
	}
	old := tlsClient(false, a, b)
	sse := bearerGet(t, old, s.base+"/v1/subscribe/hup.demo", "t1")
	defer sse.Body.Close()
	lines := sseLines(sse)
	waitLine(t, lines, ": subscribed")

	copyFile(t, bCert, certFile)
	copyFile(t, bKey, keyFile)
	if err := os.WriteFile(tokens, []byte(`{"tokens":[{"name":"one","token":"t1"},{"name":"two","token":"t2"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitLog(t, s, "TLS certificate reloaded")
	waitLog(t, s, "tokens file reloaded")
	if got := servedCert(t, addr, a, b); !got.Equal(b) {
		t.Fatal("a new connection after SIGHUP does not get the new certificate")
	}
	if code := bearerPost(t, tlsClient(false, b), s.base+"/v1/publish/hup.demo", "t2", "after reload"); code != 204 {
		t.Fatalf("the reloaded tokens file's new token: %d", code)
	}
	// The stream opened before the reload, on the old connection, goes on.
	waitLine(t, lines, `"data":"after reload"`)

	// A bad pair (b's certificate with a's key) is refused; b stays.
	copyFile(t, aKey, keyFile)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitLog(t, s, "TLS certificate reload failed")
	if got := servedCert(t, addr, a, b); !got.Equal(b) {
		t.Fatal("a bad pair replaced the served certificate")
	}
	if code := bearerPost(t, old, s.base+"/v1/publish/hup.demo", "t1", "still"); code != 204 {
		t.Fatalf("after a bad pair: %d", code)
	}
	waitLine(t, lines, `"data":"still"`)
}

func TestBadTLSPairRefusesToStart(t *testing.T) {
	dir := t.TempDir()
	aCert, _, _ := testPair(t, dir, "a")
	_, bKey, _ := testPair(t, dir, "b")
	for _, args := range [][]string{
		{"--tls-cert", aCert, "--tls-key", bKey},
		{"--tls-cert", aCert},
		{"--tls-key", bKey},
		{"--tls-cert", filepath.Join(dir, "missing.crt"), "--tls-key", bKey},
	} {
		err := run(context.Background(), append([]string{"--listen", "127.0.0.1:0", "--nats-listen", "off", "--token", "t"}, args...),
			func(string) string { return "" }, io.Discard, io.Discard)
		if err == nil {
			t.Errorf("%v: started", args)
		}
	}
}
