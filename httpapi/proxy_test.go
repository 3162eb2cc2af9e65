package httpapi

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
)

// TestForwardingHeadersPickTheClient checks the rules on one request at a
// time: who the client is, and the origin, for a peer trusted or not.
func TestForwardingHeadersPickTheClient(t *testing.T) {
	t.Parallel()
	s := &Server{cfg: Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}}}
	for _, tc := range []struct {
		name, peer     string
		hdr            []string
		remote         string
		scheme, host   string
		proxiedLogLine bool
	}{
		{"untrusted peer", "192.0.2.1:5000", []string{"X-Forwarded-For", "203.0.113.7", "X-Forwarded-Proto", "https", "X-Forwarded-Host", "evil.test"}, "192.0.2.1:5000", "http", "gw.local", false},
		{"trusted, one hop", "10.1.1.1:5000", []string{"X-Forwarded-For", "203.0.113.7"}, "203.0.113.7", "http", "gw.local", true},
		{"trusted, spoofed left entry", "10.1.1.1:5000", []string{"X-Forwarded-For", "6.6.6.6, 203.0.113.7"}, "203.0.113.7", "http", "gw.local", true},
		{"trusted chain", "10.1.1.1:5000", []string{"X-Forwarded-For", "203.0.113.7, 10.2.2.2", "X-Forwarded-Proto", "https, http"}, "203.0.113.7", "https", "gw.local", true},
		{"all hops trusted", "10.1.1.1:5000", []string{"X-Forwarded-For", "10.3.3.3, 10.2.2.2"}, "10.3.3.3", "http", "gw.local", true},
		{"proto list of another length", "10.1.1.1:5000", []string{"X-Forwarded-For", "203.0.113.7, 10.2.2.2", "X-Forwarded-Proto", "https"}, "203.0.113.7", "https", "gw.local", true},
		{"Forwarded", "10.1.1.1:5000", []string{"Forwarded", `for=203.0.113.7;proto=https;host=gw.example.com, for=10.2.2.2`}, "203.0.113.7", "https", "gw.example.com", true},
		{"Forwarded wins over XFF", "10.1.1.1:5000", []string{"Forwarded", `for="[2001:db8::7]:4711"`, "X-Forwarded-For", "203.0.113.7"}, "[2001:db8::7]:4711", "http", "gw.local", true},
		{"Forwarded unknown", "10.1.1.1:5000", []string{"Forwarded", `for=unknown;proto=https`}, "10.1.1.1:5000", "https", "gw.local", true},
		{"Forwarded obfuscated behind trusted", "10.1.1.1:5000", []string{"Forwarded", `for=_hidden, for=10.2.2.2`}, "10.1.1.1:5000", "http", "gw.local", true},
		{"IPv6 proxy", "[fd00::1]:5000", []string{"X-Forwarded-For", "2001:db8::9"}, "2001:db8::9", "http", "gw.local", true},
		{"junk proto and host", "10.1.1.1:5000", []string{"X-Forwarded-For", "203.0.113.7", "X-Forwarded-Proto", "javascript", "X-Forwarded-Host", "a b/c"}, "203.0.113.7", "http", "gw.local", true},
		{"default port dropped", "10.1.1.1:5000", []string{"X-Forwarded-Proto", "https", "X-Forwarded-Host", "gw.example.com:443"}, "10.1.1.1:5000", "https", "gw.example.com", true},
		{"no headers", "10.1.1.1:5000", nil, "10.1.1.1:5000", "http", "gw.local", false},
	} {
		r := httptest.NewRequest("GET", "http://gw.local/v1/ws", nil)
		r.RemoteAddr = tc.peer
		for i := 0; i+1 < len(tc.hdr); i += 2 {
			r.Header.Add(tc.hdr[i], tc.hdr[i+1])
		}
		var got *http.Request
		s.fromTrustedProxies(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { got = r })).ServeHTTP(httptest.NewRecorder(), r)
		scheme, host := ownOrigin(got)
		if got.RemoteAddr != tc.remote || scheme != tc.scheme || host != tc.host || (forwardedFrom(got.Context()) != nil) != tc.proxiedLogLine {
			t.Errorf("%s: remote %q, origin %s://%s, forwarded %v; want %q, %s://%s, %v", tc.name, got.RemoteAddr, scheme, host,
				forwardedFrom(got.Context()) != nil, tc.remote, tc.scheme, tc.host, tc.proxiedLogLine)
		}
	}
}

func FuzzForwardingHeaders(f *testing.F) {
	for _, seed := range [][2]string{
		{`for=192.0.2.60;proto=http;by=203.0.113.43`, "203.0.113.7, 10.0.0.1"},
		{`for="[2001:db8:cafe::17]:4711", for=unknown`, ""},
		{`for="_gazonk";host="a\"b"`, "::1"},
		{`;;,=,"`, ",,,"},
	} {
		f.Add(seed[0], seed[1])
	}
	s := &Server{cfg: Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}}}
	f.Fuzz(func(t *testing.T, fwd, xff string) {
		r := httptest.NewRequest("GET", "http://gw.local/", nil)
		r.RemoteAddr = "10.0.0.1:1"
		r.Header.Set("Forwarded", fwd)
		r.Header.Set("X-Forwarded-For", xff)
		s.fromTrustedProxies(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
			if _, ok := addrOf(r.RemoteAddr); !ok {
				t.Fatalf("RemoteAddr %q is not an address", r.RemoteAddr)
			}
			if _, host := ownOrigin(r); cleanHost(host) != host && host != "gw.local" {
				t.Fatalf("origin host %q", host)
			}
		})).ServeHTTP(httptest.NewRecorder(), r)
	})
}
