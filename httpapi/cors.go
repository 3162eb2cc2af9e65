package httpapi

import (
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"
)

var errOrigin = fmt.Errorf("%w: origin not allowed; the gateway allows its own origin and those listed in --allowed-origins (GATEWAY_ALLOWED_ORIGINS, Config.AllowedOrigins)", errForbiddenOrigin)

// originAllowed reports whether a browser request's Origin may use the
// gateway: no Origin (not a browser, or same-origin GET), the gateway's
// own origin (scheme and host: see ownOrigin), or a match of one of
// patterns. Patterns are matched
// case-insensitively with path.Match against the origin's host, or its
// "scheme://host" when the pattern has a scheme, as coder/websocket's
// AcceptOptions.OriginPatterns are, so CORS and WebSocket use one list.
func originAllowed(r *http.Request, patterns []string) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if sameOrigin(r, u.Scheme, u.Host) {
		return true
	}
	for _, p := range patterns {
		target := u.Host
		if strings.Contains(p, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, err := path.Match(strings.ToLower(p), strings.ToLower(target)); err == nil && ok {
			return true
		}
	}
	return false
}

// checkOrigin refuses cross-origin requests from origins not allowed.
func (s *Server) checkOrigin(r *http.Request) error {
	if !originAllowed(r, s.cfg.AllowedOrigins) {
		return errOrigin
	}
	return nil
}

// corsAllowHeaders are the request headers a cross-origin caller may send,
// besides NatsH-* headers.
var corsAllowHeaders = []string{"authorization", "content-type", "x-request-id", "accept", "last-event-id", "idempotency-key"}

// corsExposeHeaders are the response headers cross-origin callers may read
// (the NatsH-* headers of a reply are added per response).
const corsExposeHeaders = "X-Request-Id, Retry-After, WWW-Authenticate"

// cors answers preflights and marks responses for allowed cross-origin
// callers. Nothing is allowed by default beyond the gateway's own origin;
// a preflight from another origin gets 403. Every API call needs the
// Authorization header, so a cross-origin call always needs a preflight.
func (s *Server) cors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin == "" {
			next.ServeHTTP(w, r)
			return
		}
		h := w.Header()
		h.Add("Vary", "Origin")
		allowed := originAllowed(r, s.cfg.AllowedOrigins)
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			h.Add("Vary", "Access-Control-Request-Method")
			h.Add("Vary", "Access-Control-Request-Headers")
			if !allowed {
				writeError(w, r, errOrigin)
				return
			}
			if m := r.Header.Get("Access-Control-Request-Method"); m != http.MethodGet && m != http.MethodPost {
				writeError(w, r, fmt.Errorf("%w: method %s", errMethod, m))
				return
			}
			for _, hd := range strings.Split(r.Header.Get("Access-Control-Request-Headers"), ",") {
				hd = strings.ToLower(strings.TrimSpace(hd))
				if hd != "" && !strings.HasPrefix(hd, "natsh-") && !contains(corsAllowHeaders, hd) {
					writeError(w, r, fmt.Errorf("%w: header %q is not allowed cross-origin", errForbiddenOrigin, hd))
					return
				}
			}
			h.Set("Access-Control-Allow-Origin", origin)
			h.Set("Access-Control-Allow-Methods", "GET, POST")
			if rh := r.Header.Get("Access-Control-Request-Headers"); rh != "" {
				h.Set("Access-Control-Allow-Headers", rh)
			}
			h.Set("Access-Control-Max-Age", "600")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if allowed {
			h.Set("Access-Control-Allow-Origin", origin)
			h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
		}
		next.ServeHTTP(corsWriter{w}, r)
	})
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// corsWriter adds a reply's NatsH-* headers to the exposed headers when
// the response is written.
type corsWriter struct{ http.ResponseWriter }

func (c corsWriter) WriteHeader(code int) {
	h := c.Header()
	if h.Get("Access-Control-Allow-Origin") != "" {
		var extra []string
		for k := range h {
			if strings.HasPrefix(k, headerPrefix) {
				extra = append(extra, k)
			}
		}
		if len(extra) > 0 {
			h.Set("Access-Control-Expose-Headers", corsExposeHeaders+", "+strings.Join(extra, ", "))
		}
	}
	c.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController and the WebSocket upgrade reach the
// underlying writer.
func (c corsWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }
