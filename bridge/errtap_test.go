package bridge

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Tokens for the verdict tests: "limited" may not publish to or subscribe
// on "secret"; "noisy" may do anything.
const (
	limitedToken = "limited-secret-token"
	noisyToken   = "noisy-secret-token"
)

func verdictTokens() []Token {
	return []Token{
		{Name: "noisy", Token: noisyToken},
		{Name: "limited", Token: limitedToken,
			Publish:   &SubjectPermission{Deny: []string{"secret"}},
			Subscribe: &SubjectPermission{Deny: []string{"secret"}}},
	}
}

// floodBadHeaders connects a raw NATS client to addr and publishes, until
// the test ends, HPUB messages on subject whose header block is not
// "NATS/1.0": every copy delivered to a nats.go subscriber makes its read
// loop set LastError to ErrBadHeaderMsg and queue an async error. It
// returns once the server has accepted the first batch.
func floodBadHeaders(t *testing.T, addr, token, subject string) (sent *atomic.Int64) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("flood dial: %v", err)
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "INFO ") {
		t.Fatalf("flood: no INFO: %q %v", line, err)
	}
	if strings.Contains(line, `"tls_required":true`) {
		tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			t.Fatalf("flood: TLS: %v", err)
		}
		conn, r = tc, bufio.NewReader(tc)
	}
	fmt.Fprintf(conn, "CONNECT {\"auth_token\":%q,\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\nPING\r\n", token)
	if line, err := r.ReadString('\n'); err != nil || line != "PONG\r\n" {
		t.Fatalf("flood: connect answered %q %v", line, err)
	}
	frame := fmt.Sprintf("HPUB %s 12 14\r\nXXXX/1.0\r\n\r\nhi\r\n", subject)
	const perBatch = 32
	batch := []byte(strings.Repeat(frame, perBatch))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = r.WriteTo(io.Discard) }) // PINGs, -ERRs: unread they would stall the server
	sent = new(atomic.Int64)
	first := make(chan struct{})
	wg.Go(func() {
		// A batch a millisecond (some 30,000 messages a second) keeps the
		// read loop busy without starving the race-detected test.
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			if _, err := conn.Write(batch); err != nil {
				return
			}
			sent.Add(perBatch)
			if i == 0 {
				close(first)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	t.Cleanup(func() {
		close(stop)
		conn.Close()
		wg.Wait()
	})
	select {
	case <-first:
	case <-time.After(5 * time.Second):
		t.Fatal("flood: the server took no messages")
	}
	return sent
}

// clientAddr is the host:port of e's client listener.
func clientAddr(e *Embedded) string { return e.s.Addr().String() }

// TestForbiddenPublishIsForbiddenWhileAnotherTenantFloodsBadHeaders: the
// review's scenario. A token forbidden to publish on "secret" holds a
// subscription on "noise" while another token floods "noise" with messages
// whose header block nats.go cannot decode. Every forbidden publish, batch
// entry, subscription and request must still be refused.
func TestForbiddenPublishIsForbiddenWhileAnotherTenantFloodsBadHeaders(t *testing.T) {
	t.Parallel()
	for _, transport := range []string{"in-process", "tcp", "tls"} {
		t.Run(transport, func(t *testing.T) {
			var e *Embedded
			var cfg Config
			switch transport {
			case "in-process":
				e = startEmbedded(t, verdictTokens())
				cfg = Config{Server: e}
			case "tcp":
				e = startEmbedded(t, verdictTokens())
				cfg = Config{URL: e.ClientURL()}
			case "tls":
				var roots *x509.CertPool
				e, roots = startTLSEmbedded(t, verdictTokens())
				cfg = Config{URL: e.ClientURL(), tlsConfig: &tls.Config{RootCAs: roots}}
			}
			testVerdictsUnderBadHeaderFlood(t, e, cfg)
			if transport == "tls" {
				mustUseTLS(t, e)
			}
		})
	}
}

// startTLSEmbedded starts an embedded server that requires TLS, with a
// certificate for localhost and 127.0.0.1 from a new CA, which it returns.
func startTLSEmbedded(t *testing.T, tokens []Token) (*Embedded, *x509.CertPool) {
	t.Helper()
	dir := t.TempDir()
	roots := writeTestCert(t, dir)
	conf := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("tls {\n  cert_file: %q\n  key_file: %q\n}\n",
		filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))), 0o600); err != nil {
		t.Fatal(err)
	}
	e, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", ConfigFile: conf, Tokens: tokens})
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	t.Cleanup(func() { _ = e.Shutdown(context.Background()) })
	return e, roots
}

// writeTestCert writes cert.pem and key.pem for localhost and 127.0.0.1
// into dir, signed by a new CA, and returns a pool holding the CA.
func writeTestCert(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "natsgate test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for name, block := range map[string]*pem.Block{
		"cert.pem": {Type: "CERTIFICATE", Bytes: der},
		"key.pem":  {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	return roots
}

// mustUseTLS fails unless every gateway connection to e is over TLS.
func mustUseTLS(t *testing.T, e *Embedded) {
	t.Helper()
	cz, err := e.s.Connz(nil)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ci := range cz.Conns {
		if ci.Name == "natsgate" {
			n++
			if ci.TLSVersion == "" {
				t.Fatalf("gateway connection %d is not over TLS", ci.Cid)
			}
		}
	}
	if n == 0 {
		t.Fatal("no gateway connection to check")
	}
}

func TestTLSToExternalServersIsVerifiedAndTapped(t *testing.T) {
	t.Parallel()
	e, roots := startTLSEmbedded(t, verdictTokens())
	_, port, _ := net.SplitHostPort(clientAddr(e))
	ctx := context.Background()
	for _, tc := range []struct {
		name, url string
		roots     *x509.CertPool
		ok        bool
	}{
		{"by name, server requires TLS", "nats://localhost:" + port, roots, true},
		{"by address, tls:// URL", "tls://127.0.0.1:" + port, roots, true},
		{"unknown CA", "nats://localhost:" + port, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestPool(t, Config{URL: tc.url, tlsConfig: &tls.Config{RootCAs: tc.roots}, ConnectTimeout: 2 * time.Second})
			c, err := p.Acquire(ctx, limitedToken)
			if !tc.ok {
				if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "certificate") {
					t.Fatalf("Acquire = %v, want ErrUnavailable for the certificate", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Acquire: %v", err)
			}
			defer c.Release()
			mustUseTLS(t, e)
			if err := c.Publish(ctx, &Msg{Subject: "open"}, 0); err != nil {
				t.Fatalf("allowed publish: %v", err)
			}
			if err := c.Publish(ctx, &Msg{Subject: "secret"}, 0); !errors.Is(err, ErrForbidden) {
				t.Fatalf("forbidden publish = %v, want ErrForbidden", err)
			}
		})
	}
	// A certificate for another name is refused.
	p := newTestPool(t, Config{URL: "nats://localhost:" + port, tlsConfig: &tls.Config{RootCAs: roots, ServerName: "elsewhere"}})
	if _, err := p.Acquire(ctx, limitedToken); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Acquire with a certificate for another name = %v, want ErrUnavailable", err)
	}
}

func TestWebSocketNATSURLsAreRefused(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"ws://127.0.0.1:1", "nats://127.0.0.1:1,wss://127.0.0.1:2"} {
		p := newTestPool(t, Config{URL: u})
		if _, err := p.Acquire(context.Background(), limitedToken); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "ws://") {
			t.Errorf("Acquire via %s = %v, want ErrUnavailable naming ws://", u, err)
		}
	}
}

// testVerdictsUnderBadHeaderFlood checks every kind of verdict of a
// "limited" connection made with cfg while "noisy" floods a subject it
// subscribes to with malformed headers.
func testVerdictsUnderBadHeaderFlood(t *testing.T, e *Embedded, cfg Config) {
	p := newTestPool(t, cfg)
	c := mustAcquire(t, p, limitedToken)
	ctx := context.Background()
	var got atomic.Int64
	sub, err := c.Subscribe(ctx, "noise", "", sinkFunc(func(*Msg) { got.Add(1) }), 0)
	if err != nil {
		t.Fatalf("subscribe noise: %v", err)
	}
	defer sub.Close()
	sent := floodBadHeaders(t, clientAddr(e), noisyToken, "noise")
	deadline := time.Now().Add(5 * time.Second)
	for got.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got.Load() == 0 {
		t.Fatal("the flood never reached the gateway's subscription")
	}

	const workers, each = 8, 125
	var wg sync.WaitGroup
	var confirmed, other atomic.Int64
	var otherErr atomic.Value
	for range workers {
		wg.Go(func() {
			for range each {
				switch err := c.Publish(ctx, &Msg{Subject: "secret", Data: []byte("x")}, 0); {
				case err == nil:
					confirmed.Add(1)
				case !errors.Is(err, ErrForbidden):
					other.Add(1)
					otherErr.Store(err)
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d bad-header messages flooded, %d delivered to the gateway", sent.Load(), got.Load())
	if n := confirmed.Load(); n > 0 {
		t.Errorf("%d of %d publishes the server refused were confirmed", n, workers*each)
	}
	if n := other.Load(); n > 0 {
		t.Errorf("%d of %d forbidden publishes failed otherwise, last: %v", n, workers*each, otherErr.Load())
	}

	var badBatch, subOK, reqWrong int
	for range 50 {
		errs := make([]error, 3)
		c.PublishBatch(ctx, []*Msg{{Subject: "open"}, {Subject: "secret"}, {Subject: "open"}}, errs, 0)
		if errs[0] != nil || !errors.Is(errs[1], ErrForbidden) || errs[2] != nil {
			badBatch++
			t.Logf("batch = %v, want [nil forbidden nil]", errs)
		}
	}
	for range 100 {
		if s, err := c.Subscribe(ctx, "secret", "", sinkFunc(func(*Msg) {}), 0); !errors.Is(err, ErrForbidden) {
			if s != nil {
				s.Close()
			}
			subOK++
		}
	}
	for range 20 {
		start := time.Now()
		_, err := c.Request(ctx, &Msg{Subject: "secret"}, 3*time.Second, 0)
		if d := time.Since(start); !errors.Is(err, ErrForbidden) || d > 2*time.Second {
			reqWrong++
			t.Logf("request = %v after %v, want ErrForbidden at once", err, d)
		}
	}
	if badBatch+subOK+reqWrong > 0 {
		t.Errorf("wrong verdicts: %d of 50 batches, %d of 100 forbidden subscriptions accepted, %d of 20 requests", badBatch, subOK, reqWrong)
	}
	// Allowed publishes are still confirmed.
	if err := c.Publish(ctx, &Msg{Subject: "open"}, 0); err != nil {
		t.Fatalf("allowed publish during the flood: %v", err)
	}
}

func msgFrame(op, args, hdr, payload string) string {
	if op == "HMSG" {
		return fmt.Sprintf("HMSG %s %d %d\r\n%s%s\r\n", args, len(hdr), len(hdr)+len(payload), hdr, payload)
	}
	return fmt.Sprintf("%s %s %d\r\n%s\r\n", op, args, len(payload), payload)
}

// fakeDeny is what another tenant may put in a payload or a header.
const fakeDeny = "-ERR 'Permissions Violation for Publish to \"open\"'\r\n"

// realStream is what a server might send a gateway connection: INFO,
// messages whose payloads and headers look like permission violations,
// and real ones among them, which are realViolations.
var (
	realStream = "INFO {\"server_id\":\"x\",\"headers\":true,\"max_payload\":1048576}\r\n" +
		msgFrame("MSG", "noise 1", "", fakeDeny) +
		"-ERR 'Permissions Violation for Publish to \"secret\"'\r\n" +
		msgFrame("HMSG", "noise 1 _INBOX.r", "NATS/1.0\r\nX: "+fakeDeny+"\r\n", "hi") +
		"PING\r\n" +
		msgFrame("HMSG", "noise 1", "XXXX/1.0\r\n\r\n", "\r\n"+fakeDeny) +
		"-ERR 'Permissions Violation for Subscription to \"secret\" using queue \"q\"'\r\n" +
		msgFrame("MSG", "noise 1", "", "") +
		"+OK\r\n" +
		"-ERR 'Unknown Protocol Operation'\r\n" +
		msgFrame("msg", "noise\t1\treply", "", fakeDeny+fakeDeny) +
		"-ERR\t'Permissions Violation for Publish with Reply of \"r\"'\r\n" +
		"-ERR 'Permissions Violation for something new'\r\n" +
		msgFrame("MSG", "noise 1", "", strings.Repeat(fakeDeny, 20)) +
		"PONG\r\n"
	realViolations = []violation{
		{kind: denyPublish, subject: "secret"},
		{kind: denySubscribe, subject: "secret", queue: "q"},
		{kind: denyReply, subject: "r"},
		{kind: denyUnknown, subject: "Permissions Violation for something new"},
	}
)

func newTestLog() *permissionLog {
	var l permissionLog
	l.init()
	return &l
}

// recorded lists what a permission log holds, oldest first.
func (l *permissionLog) recorded() []violation {
	l.mu.Lock()
	defer l.mu.Unlock()
	var vs []violation
	for s := uint64(1); s <= l.n; s++ {
		vs = append(vs, l.ring[(s-1)%violationRing])
	}
	return vs
}

// tapChunks feeds chunks to a new tap and returns what it recorded.
func tapChunks(t *testing.T, chunks ...[]byte) []violation {
	t.Helper()
	l := newTestLog()
	tap := newErrTap(l)
	for _, c := range chunks {
		if err := tap.scan(c); err != nil {
			t.Fatalf("scan: %v", err)
		}
	}
	return l.recorded()
}

func TestErrTapRecordsExactlyTheServersViolationsHoweverTheStreamIsSplit(t *testing.T) {
	t.Parallel()
	want := fmt.Sprint(realViolations)
	b := []byte(realStream)
	if got := fmt.Sprint(tapChunks(t, b)); got != want {
		t.Fatalf("whole stream: recorded %s, want %s", got, want)
	}
	for i := range b {
		if got := fmt.Sprint(tapChunks(t, b[:i], b[i:])); got != want {
			t.Fatalf("split at %d: recorded %s, want %s", i, got, want)
		}
	}
	bytewise := make([][]byte, len(b))
	for i := range b {
		bytewise[i] = b[i : i+1]
	}
	if got := fmt.Sprint(tapChunks(t, bytewise...)); got != want {
		t.Fatalf("byte by byte: recorded %s, want %s", got, want)
	}
}

func TestErrTapRecordsAViolationBeforeHandingOverWhatFollows(t *testing.T) {
	t.Parallel()
	l := newTestLog()
	server, client := net.Pipe()
	defer server.Close()
	c := &tapConn{Conn: client, tap: newErrTap(l)}
	go func() {
		_, _ = server.Write([]byte("-ERR 'Permissions Violation for Pub"))
		_, _ = server.Write([]byte("lish to \"secret\"'\r\nPONG\r\n"))
	}()
	buf := make([]byte, 64)
	var got []byte
	for !bytes.Contains(got, []byte("PONG\r\n")) {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if v := l.recorded(); len(v) != 1 || v[0] != (violation{kind: denyPublish, subject: "secret"}) {
		t.Fatalf("when the PONG was read the log held %v", v)
	}
	if string(got) != "-ERR 'Permissions Violation for Publish to \"secret\"'\r\nPONG\r\n" {
		t.Fatalf("the tap changed the stream: %q", got)
	}
}

func TestErrTapFailsAStreamItCannotFollow(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{
		"\r\n",
		"XYZ\r\n",
		"MSG noise\r\n",
		"MSG noise 1 a b c\r\nxx\r\n",
		"MSG noise 1 -3\r\n",
		"MSG noise 1 99999999999999999999\r\n",
		"MSGX noise 1 3\r\nabc\r\n",
		"HMSG noise 1 3\r\nabc\r\n",
		"-ERROR\r\n",
	} {
		l := newTestLog()
		tap := newErrTap(l)
		if err := tap.scan([]byte(bad + "-ERR 'Permissions Violation for Publish to \"x\"'\r\n")); !errors.Is(err, errTapLost) {
			t.Errorf("%q: scan = %v, want errTapLost", bad, err)
		}
		if err := tap.scan([]byte("PONG\r\n")); !errors.Is(err, errTapLost) {
			t.Errorf("%q: the tap went on reading after it lost the stream", bad)
		}
	}
}

func TestErrTapBoundsWhatItKeepsOfALongLine(t *testing.T) {
	t.Parallel()
	l := newTestLog()
	tap := newErrTap(l)
	long := "INFO {\"x\":\"" + strings.Repeat("a", 1<<20) + "\"}\r\n"
	subject := strings.Repeat("s", 2*maxTapLine)
	msg := msgFrame("MSG", subject+" 1 "+subject, "", fakeDeny)
	spaced := msgFrame("MSG", subject+" 1"+strings.Repeat(" ", 2*tapTail), "", fakeDeny)
	deny := "-ERR 'Permissions Violation for Publish to \"" + subject + "\"'\r\n"
	for _, part := range []string{long, msg, spaced, deny, "PONG\r\n"} {
		// In pieces, so that every line is kept across reads.
		for b := []byte(part); len(b) > 0; {
			n := min(len(b), 1000)
			if err := tap.scan(b[:n]); err != nil {
				t.Fatalf("scan: %v", err)
			}
			b = b[n:]
		}
	}
	if cap(tap.line) > maxTapLine {
		t.Fatalf("the tap keeps %d bytes of a line, bound %d", cap(tap.line), maxTapLine)
	}
	// The violation's subject was cut off: it is recorded as one the
	// gateway cannot attribute, which refuses everything.
	if v := l.recorded(); len(v) != 1 || v[0].kind != denyUnknown {
		t.Fatalf("recorded %v, want one unattributable violation", v)
	}
	if err := l.publishDenied(0, "anything", ""); !errors.Is(err, ErrForbidden) {
		t.Fatalf("publishDenied after an unattributable violation = %v", err)
	}
}

// BenchmarkErrTap measures the tap on a stream of 128-byte messages with
// headers, as a subscription on a busy subject sees.
func BenchmarkErrTap(b *testing.B) {
	frame := msgFrame("HMSG", "orders.eu 7 _INBOX.abc.def", "NATS/1.0\r\nTrace: 1\r\n\r\n", strings.Repeat("x", 128))
	buf := []byte(strings.Repeat(frame, 32<<10/len(frame)))
	tap := newErrTap(newTestLog())
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if err := tap.scan(buf); err != nil {
			b.Fatal(err)
		}
	}
}

func TestHasOpFoldsASCIILettersOnly(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		line, op string
		want     bool
	}{
		{"MSG a 1 0", "MSG", true},
		{"msg\ta 1 0", "MSG", true},
		{"mSg a", "MSG", true},
		{"MSGa 1 0", "MSG", false},
		{"MSG", "MSG", false},
		{"-err x", "-ERR", true},
		{"Merr x", "-ERR", false},
		{"M\xc5\xbfG a 1 0", "MSG", false}, // U+017F folds to s in Unicode, not in NATS
		{"HMSG a", "HMSG", true},
	} {
		if got := hasOp([]byte(tc.line), tc.op); got != tc.want {
			t.Errorf("hasOp(%q, %q) = %v, want %v", tc.line, tc.op, got, tc.want)
		}
	}
}
