package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/coder/websocket"
)

// clientFrom is an HTTP client whose connections come from the loopback
// address ip (127.0.0.2 is a different peer than 127.0.0.1).
func clientFrom(t *testing.T, ip string) *http.Client {
	t.Helper()
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Skipf("cannot use loopback address %s: %v", ip, err)
	}
	l.Close()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

func send(t *testing.T, c *http.Client, method, url, token string, hdr ...string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// TestTrustedProxiesHeadersCountOnlyFromThem runs the gateway trusting
// 127.0.0.2 as its proxy and talks to it from 127.0.0.2 and from
// 127.0.0.1, a client that tries to spoof the same headers.
func TestTrustedProxiesHeadersCountOnlyFromThem(t *testing.T) {
	proxy, direct := clientFrom(t, "127.0.0.2"), clientFrom(t, "127.0.0.1")
	s := start(t, nil, "--token", "good", "--trusted-proxies", "127.0.0.2/32", "--auth-failure-limit", "3")
	pub := s.base + "/v1/publish/proxy.x"

	// Through the proxy, failures count against the client it names,
	// the rightmost hop that is not the proxy: an entry the client wrote
	// itself (198.51.100.1) changes nothing.
	for i := 0; i < 3; i++ {
		if r := send(t, proxy, "POST", pub, "bad", "X-Forwarded-For", "203.0.113.7"); r.StatusCode != 401 {
			t.Fatalf("wrong token through the proxy: %d", r.StatusCode)
		}
	}
	for _, h := range [][]string{
		{"X-Forwarded-For", "203.0.113.7"},
		{"X-Forwarded-For", "198.51.100.1, 203.0.113.7"},
		{"X-Forwarded-For", "198.51.100.1", "X-Forwarded-For", "203.0.113.7, 127.0.0.2"},
		{"Forwarded", `for="203.0.113.7:4711";proto=https`},
	} {
		// A wrong token, so that a token the pool already holds (which
		// passes a limited address) cannot hide the limit.
		if r := send(t, proxy, "POST", pub, "bad", h...); r.StatusCode != 429 {
			t.Errorf("client over its limit, through the proxy with %q: %d, want 429", h, r.StatusCode)
		}
	}
	// Another client behind the same proxy, and the proxy itself, are not limited.
	if r := send(t, proxy, "POST", pub, "good", "X-Forwarded-For", "203.0.113.8"); r.StatusCode != 204 {
		t.Errorf("another client behind the proxy: %d, want 204", r.StatusCode)
	}
	if r := send(t, proxy, "POST", pub, "good"); r.StatusCode != 204 {
		t.Errorf("the proxy's own request: %d, want 204", r.StatusCode)
	}

	// From anyone else the headers are ignored: naming the limited
	// client neither hurts it nor lets the sender escape its own limit.
	if r := send(t, direct, "POST", pub, "good", "X-Forwarded-For", "203.0.113.7", "Forwarded", "for=203.0.113.7"); r.StatusCode != 204 {
		t.Errorf("untrusted peer naming the limited client: %d, want 204 (headers ignored)", r.StatusCode)
	}
	for i := 0; i < 3; i++ {
		xff := "203.0.113." + string(rune('a'+i)) // a different "client" each time
		if r := send(t, direct, "POST", pub, "bad", "X-Forwarded-For", xff); r.StatusCode != 401 {
			t.Fatalf("wrong token from the untrusted peer: %d", r.StatusCode)
		}
	}
	if r := send(t, direct, "POST", pub, "bad", "X-Forwarded-For", "203.0.113.50"); r.StatusCode != 429 {
		t.Errorf("untrusted peer rotating X-Forwarded-For after 3 failures: %d, want 429", r.StatusCode)
	}

	// The access log shows the client as remote (and the proxy), only for
	// the proxy's requests.
	log := s.stderr.String()
	var proxied, spoofed int
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, "msg=request") {
			continue
		}
		if strings.Contains(l, "remote=203.0.113.7 ") && strings.Contains(l, "proxy=127.0.0.2:") ||
			strings.Contains(l, "remote=203.0.113.7:4711 ") {
			proxied++
		}
		if strings.Contains(l, "remote=127.0.0.1:") && !strings.Contains(l, "proxy=") {
			spoofed++
		}
		if strings.Contains(l, "remote=203.0.113.5") || strings.Contains(l, "remote=203.0.113.a") {
			t.Errorf("an untrusted peer's X-Forwarded-For reached the log: %s", l)
		}
	}
	if proxied < 7 || spoofed < 5 {
		t.Errorf("access log: %d proxied lines with the client as remote (want 7), %d direct lines (want 5):\n%s", proxied, spoofed, log)
	}
}

// TestTrustedProxiesGiveTheOwnOrigin: behind a TLS-terminating proxy the
// browser's origin is https://public-host; only the proxy can say so.
func TestTrustedProxiesGiveTheOwnOrigin(t *testing.T) {
	proxy, direct := clientFrom(t, "127.0.0.2"), clientFrom(t, "127.0.0.1")
	s := start(t, nil, "--token", "good", "--trusted-proxies", "127.0.0.2")
	const origin = "https://gw.example.com"
	xf := []string{"X-Forwarded-For", "203.0.113.9", "X-Forwarded-Proto", "https", "X-Forwarded-Host", "gw.example.com"}
	fwd := []string{"Forwarded", `for=203.0.113.9;proto=https;host="gw.example.com"`}
	preflight := func(c *http.Client, hdr []string) int {
		h := append([]string{"Origin", origin, "Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "authorization"}, hdr...)
		return send(t, c, "OPTIONS", s.base+"/v1/publish/x", "", h...).StatusCode
	}
	for _, tc := range []struct {
		name string
		c    *http.Client
		hdr  []string
		want int
	}{
		{"proxy, X-Forwarded-*", proxy, xf, 204},
		{"proxy, Forwarded", proxy, fwd, 204},
		{"proxy, another scheme", proxy, []string{"X-Forwarded-Proto", "http", "X-Forwarded-Host", "gw.example.com"}, 403},
		{"proxy, no headers", proxy, nil, 403},
		{"untrusted, X-Forwarded-*", direct, xf, 403},
		{"untrusted, Forwarded", direct, fwd, 403},
	} {
		if got := preflight(tc.c, tc.hdr); got != tc.want {
			t.Errorf("preflight from %s via %s: %d, want %d", origin, tc.name, got, tc.want)
		}
	}
	wsURL := "ws" + strings.TrimPrefix(s.base, "http") + "/v1/ws"
	dial := func(c *http.Client, hdr []string) error {
		h := http.Header{"Authorization": {"Bearer good"}, "Origin": {origin}}
		for i := 0; i+1 < len(hdr); i += 2 {
			h.Add(hdr[i], hdr[i+1])
		}
		ws, _, err := websocket.Dial(context.Background(), wsURL, &websocket.DialOptions{HTTPClient: c, HTTPHeader: h})
		if err == nil {
			ws.CloseNow()
		}
		return err
	}
	if err := dial(proxy, xf); err != nil {
		t.Errorf("WebSocket from %s through the proxy: %v", origin, err)
	}
	if err := dial(proxy, fwd); err != nil {
		t.Errorf("WebSocket from %s through the proxy (Forwarded): %v", origin, err)
	}
	if err := dial(direct, xf); err == nil {
		t.Errorf("WebSocket from %s with spoofed headers from an untrusted peer was accepted", origin)
	}
}

func TestTrustedProxiesFlag(t *testing.T) {
	t.Parallel()
	got, err := parseTrustedProxies("10.0.0.0/8, 192.168.1.7 ,2001:db8::/32,::ffff:172.16.0.0/108")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32", "172.16.0.0/12"}
	if len(got) != len(want) {
		t.Fatalf("%v, want %v", got, want)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Errorf("%d: %v, want %s", i, got[i], want[i])
		}
	}
	if _, err := parseTrustedProxies("10.0.0.0/33"); err == nil {
		t.Error("a bad CIDR is accepted")
	}
	if _, err := parseTrustedProxies("proxy.example.com"); err == nil {
		t.Error("a host name is accepted")
	}
}
