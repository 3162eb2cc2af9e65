package httpapi

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// maxHops bounds the forwarding hops read from a request's headers; the
// rightmost ones (nearest the gateway) are the ones that count.
const maxHops = 64

// forwarded is what a trusted proxy said about a request: who sent it to
// the proxy, and the scheme and host the client used.
type forwarded struct {
	peer  string // the proxy's own address, r.RemoteAddr as it came
	proto string // "http" or "https"; "" when the proxy did not say
	host  string // "" when the proxy did not say
}

type forwardedKey struct{}

func forwardedFrom(ctx context.Context) *forwarded {
	f, _ := ctx.Value(forwardedKey{}).(*forwarded)
	return f
}

// hop is one node of a forwarding chain, nearest the client first.
type hop struct {
	addr        netip.Addr
	port        string
	ok          bool // addr is an IP (not "unknown" or an obfuscated name)
	proto, host string
}

func (s *Server) trusted(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// fromTrustedProxies believes the forwarding headers of requests whose
// peer is in Config.TrustedProxies, and of no one else: Forwarded (RFC
// 7239) or else X-Forwarded-For, with X-Forwarded-Proto and
// X-Forwarded-Host. The client is the rightmost hop that is not itself a
// trusted proxy (what a client writes into the headers itself is to the
// left of what the proxies append, so it cannot pose as someone else).
// r.RemoteAddr becomes the client's address (its IP, with the port when
// the proxy gave one) for the failed-authentication limit, the access log
// and WebSocket sessions; the scheme and host the client used become the
// gateway's own origin for the same-origin check.
func (s *Server) fromTrustedProxies(next http.Handler) http.Handler {
	if len(s.cfg.TrustedProxies) == 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer, ok := addrOf(r.RemoteAddr)
		if !ok || !s.trusted(peer) {
			next.ServeHTTP(w, r)
			return
		}
		hops := forwardingHops(r.Header)
		if len(hops) == 0 {
			next.ServeHTTP(w, r)
			return
		}
		i := len(hops) - 1
		for i > 0 && hops[i].ok && s.trusted(hops[i].addr) {
			i--
		}
		h := hops[i]
		f := &forwarded{peer: r.RemoteAddr, proto: h.proto, host: h.host}
		r = r.WithContext(context.WithValue(r.Context(), forwardedKey{}, f))
		if h.ok {
			r.RemoteAddr = h.addr.String()
			if h.port != "" {
				r.RemoteAddr = net.JoinHostPort(r.RemoteAddr, h.port)
			}
		}
		next.ServeHTTP(w, r)
	})
}

// addrOf parses the IP of a "host:port" or bare address.
func addrOf(remote string) (netip.Addr, bool) {
	if ap, err := netip.ParseAddrPort(remote); err == nil {
		return ap.Addr().Unmap(), true
	}
	a, err := netip.ParseAddr(remote)
	return a.Unmap(), err == nil
}

// forwardingHops reads Forwarded when present, else X-Forwarded-For; the
// X-Forwarded-Proto and -Host lists go with the X-Forwarded-For hop of the
// same index, or, when the lists' lengths differ, their last entry (the
// one the nearest proxy wrote) goes with every hop.
func forwardingHops(h http.Header) []hop {
	if v := h.Values("Forwarded"); len(v) > 0 {
		if hops := parseForwarded(v); len(hops) > 0 {
			return hops
		}
	}
	xff := splitList(h.Values("X-Forwarded-For"))
	protos := splitList(h.Values("X-Forwarded-Proto"))
	hosts := splitList(h.Values("X-Forwarded-Host"))
	pick := func(list []string, i, n int) string {
		switch {
		case len(list) == 0:
			return ""
		case len(list) == n:
			return list[i]
		}
		return list[len(list)-1]
	}
	if len(xff) == 0 {
		if len(protos) == 0 && len(hosts) == 0 {
			return nil
		}
		// Scheme and host without a client address: the peer stays the
		// client.
		return []hop{{proto: cleanProto(pick(protos, 0, 1)), host: cleanHost(pick(hosts, 0, 1))}}
	}
	hops := make([]hop, 0, len(xff))
	for i, node := range xff {
		var hp hop
		hp.addr, hp.port, hp.ok = parseNode(node)
		hp.proto, hp.host = cleanProto(pick(protos, i, len(xff))), cleanHost(pick(hosts, i, len(xff)))
		hops = append(hops, hp)
	}
	return lastHops(hops)
}

// parseForwarded reads RFC 7239 elements: for=, proto=, host= (by= and
// extensions are ignored). An element without a usable for= is a hop of
// unknown address.
func parseForwarded(values []string) []hop {
	var hops []hop
	for _, v := range values {
		for _, elem := range splitQuoted(v, ',') {
			if strings.TrimSpace(elem) == "" {
				continue
			}
			var hp hop
			for _, pair := range splitQuoted(elem, ';') {
				k, val, ok := strings.Cut(strings.TrimSpace(pair), "=")
				if !ok {
					continue
				}
				val = unquote(strings.TrimSpace(val))
				switch strings.ToLower(strings.TrimSpace(k)) {
				case "for":
					hp.addr, hp.port, hp.ok = parseNode(val)
				case "proto":
					hp.proto = cleanProto(val)
				case "host":
					hp.host = cleanHost(val)
				}
			}
			hops = append(hops, hp)
		}
	}
	return lastHops(hops)
}

func lastHops(hops []hop) []hop {
	if len(hops) > maxHops {
		return hops[len(hops)-maxHops:]
	}
	return hops
}

// parseNode reads a node: 192.0.2.1, 192.0.2.1:8080, [2001:db8::1],
// [2001:db8::1]:8080 or a bare IPv6 address. "unknown" and obfuscated
// names ("_hidden") are not addresses.
func parseNode(v string) (netip.Addr, string, bool) {
	if ap, err := netip.ParseAddrPort(v); err == nil {
		return ap.Addr().Unmap(), strconv.Itoa(int(ap.Port())), true
	}
	if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(v, "["), "]")); err == nil {
		return a.Unmap(), "", true
	}
	return netip.Addr{}, "", false
}

func cleanProto(v string) string {
	switch v = strings.ToLower(strings.TrimSpace(v)); v {
	case "http", "https":
		return v
	}
	return ""
}

// cleanHost accepts a host[:port] made of the characters hosts have;
// anything else is ignored.
func cleanHost(v string) string {
	v = strings.TrimSpace(v)
	if v == "" || len(v) > 255 {
		return ""
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(".-_:[]", c) >= 0) {
			return ""
		}
	}
	return v
}

// splitList splits comma-separated header values, trimmed, empties
// dropped.
func splitList(values []string) []string {
	var out []string
	for _, v := range values {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

// splitQuoted splits s at sep outside double-quoted strings.
func splitQuoted(s string, sep byte) []string {
	var out []string
	quoted, escaped, start := false, false, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case escaped:
			escaped = false
		case quoted && c == '\\':
			escaped = true
		case c == '"':
			quoted = !quoted
		case c == sep && !quoted:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

func unquote(v string) string {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return v
	}
	var b strings.Builder
	for i := 1; i < len(v)-1; i++ {
		if v[i] == '\\' && i+1 < len(v)-1 {
			i++
		}
		b.WriteByte(v[i])
	}
	return b.String()
}

// ownOrigin is the scheme and host the gateway considers its own origin:
// the request's (https when it came over TLS), or what a trusted proxy
// said the client used. Default ports are left out, as browsers leave
// them out of Origin.
func ownOrigin(r *http.Request) (scheme, host string) {
	scheme, host = "http", r.Host
	if r.TLS != nil {
		scheme = "https"
	}
	if f := forwardedFrom(r.Context()); f != nil {
		if f.proto != "" {
			scheme = f.proto
		}
		if f.host != "" {
			host = f.host
		}
	}
	return scheme, withoutDefaultPort(scheme, host)
}

func withoutDefaultPort(scheme, host string) string {
	switch {
	case scheme == "https" && strings.HasSuffix(host, ":443"):
		return strings.TrimSuffix(host, ":443")
	case scheme == "http" && strings.HasSuffix(host, ":80"):
		return strings.TrimSuffix(host, ":80")
	}
	return host
}

// sameOrigin reports whether origin (scheme://host) is the gateway's own.
func sameOrigin(r *http.Request, originScheme, originHost string) bool {
	scheme, host := ownOrigin(r)
	return strings.EqualFold(originScheme, scheme) && strings.EqualFold(withoutDefaultPort(strings.ToLower(originScheme), originHost), host)
}

// originPatterns is the list a WebSocket upgrade hands coder/websocket,
// which checks Origin against r.Host and these patterns once more: behind
// a trusted proxy that names another host, that host is added (checkOrigin
// has already matched it with its scheme).
func (s *Server) originPatterns(r *http.Request) []string {
	_, host := ownOrigin(r)
	if f := forwardedFrom(r.Context()); f == nil || f.host == "" || strings.EqualFold(host, r.Host) {
		return s.cfg.AllowedOrigins
	}
	return append(slices.Clip(s.cfg.AllowedOrigins), escapePattern(host))
}

// escapePattern quotes path.Match's special characters ("[" of an IPv6
// host).
func escapePattern(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(`*?[]\`, s[i]) >= 0 {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
