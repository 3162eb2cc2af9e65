package httpapi

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/natsgate/natsgate/bridge"
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

// notFound answers 404, or 400 bad-subject for a subject route whose
// subject is empty ("POST /v1/publish/"): the route is right, the subject
// is missing.
func (s *Server) notFound(w http.ResponseWriter, r *http.Request) {
	path := routePath(r)
	method := r.Method
	if method == http.MethodHead {
		method = http.MethodGet
	}
	if strings.HasSuffix(path, "/") && strings.HasSuffix(s.router.Find(chi.NewRouteContext(), method, path+"x"), "/{subject}") {
		writeError(w, r, fmt.Errorf("%w: the subject is empty; it goes after %s", bridge.ErrBadSubject, r.URL.Path))
		return
	}
	writeError(w, r, errNotFound)
}

// subjectHint is added to a bad-subject problem whose URL ends in a dot:
// most often a shell read the '>' of an unquoted URL as a redirect.
func subjectHint(r *http.Request) string {
	if !strings.HasSuffix(r.URL.Path, ".") {
		return ""
	}
	return ` (a subject ending in "." is often a shell's doing: unquoted, "demo.>" becomes "demo." and a redirect; quote URLs that contain '>', as in curl 'http://…/v1/subscribe/demo.>')`
}
