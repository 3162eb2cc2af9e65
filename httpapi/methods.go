package httpapi

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"
)

// streamingGETs are the GET routes that answer with a stream (SSE, NDJSON,
// a WebSocket upgrade). HEAD is not answered there: it would open a
// subscription with no body to carry it. The list holds today's routes and
// the version-2 streams API.md names (Synadia-style SSE subscribe, KV
// watch), so those are covered when they are added; a new streaming GET
// route belongs here.
var streamingGETs = map[string]bool{
	"/v1/subscribe/{subject}":        true,
	"/v1/ws":                         true,
	"/v1/nats/subjects/{subject}":    true,
	"/v1/kvm/buckets/{bucket}/watch": true,
}

// routeMethods are the methods a 405's Allow header may list, in order.
var routeMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}

// routePath is the path the router matches: the remainder after a parent
// chi router's mount point, or the request's path.
func routePath(r *http.Request) string {
	if rctx := chi.RouteContext(r.Context()); rctx != nil && rctx.RoutePath != "" {
		return rctx.RoutePath
	}
	if r.URL.RawPath != "" {
		return r.URL.RawPath
	}
	return r.URL.Path
}

// getPattern is the pattern of the GET route matching path, or "".
func (s *Server) getPattern(path string) string {
	return s.router.Find(chi.NewRouteContext(), http.MethodGet, path)
}

// answerHead routes a HEAD request to the GET route of its path, unless a
// HEAD route of its own exists or that GET route is a stream (405, Allow:
// GET). net/http sends the GET handler's headers and drops its body.
func (s *Server) answerHead(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodHead {
			next.ServeHTTP(w, r)
			return
		}
		path := routePath(r)
		if s.router.Match(chi.NewRouteContext(), http.MethodHead, path) {
			next.ServeHTTP(w, r)
			return
		}
		switch pattern := s.getPattern(path); {
		case pattern == "":
			// No GET route either: routing answers 404 or 405.
		case streamingGETs[pattern]:
			s.methodNotAllowed(w, r)
			return
		default:
			chi.RouteContext(r.Context()).RouteMethod = http.MethodGet
		}
		next.ServeHTTP(w, r)
	})
}

// allowedMethods lists the methods some route answers on path; HEAD
// wherever a non-streaming GET is.
func (s *Server) allowedMethods(path string) []string {
	var out []string
	for _, m := range routeMethods {
		switch {
		case m == http.MethodHead:
			if p := s.getPattern(path); p != "" && !streamingGETs[p] || s.router.Match(chi.NewRouteContext(), m, path) {
				out = append(out, m)
			}
		case s.router.Match(chi.NewRouteContext(), m, path):
			out = append(out, m)
		}
	}
	return out
}

// methodNotAllowed answers 405 with an Allow header and, in the detail,
// the methods the route does answer.
func (s *Server) methodNotAllowed(w http.ResponseWriter, r *http.Request) {
	allowed := s.allowedMethods(routePath(r))
	if len(allowed) == 0 {
		writeError(w, r, fmt.Errorf("%w: %s %s", errMethod, r.Method, r.URL.Path))
		return
	}
	list := strings.Join(allowed, ", ")
	w.Header().Set("Allow", list)
	hint := "this route answers " + list
	if r.Method == http.MethodHead {
		hint = "a stream has no HEAD; this route answers " + list
	}
	writeError(w, r, fmt.Errorf("%w: %s %s: %s", errMethod, r.Method, r.URL.Path, hint))
}
