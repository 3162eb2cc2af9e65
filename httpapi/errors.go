package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/natsgate/natsgate/bridge"
)

// Errors of the edge itself, beside the bridge's sentinels.
var (
	errMissingToken  = errors.New("missing credentials: send Authorization: Bearer <token>")
	errTokenInURL    = errors.New("a token in the URL is refused (URLs end up in logs and browser history): send it in the Authorization: Bearer header, or, on a WebSocket, in the first frame {\"op\":\"connect\",\"token\":…}")
	errBadRequest    = errors.New("bad request")
	errNotFound      = errors.New("no such route")
	errMethod        = errors.New("method not allowed")
	errShuttingDown  = errors.New("the gateway is shutting down")
	errTooManyFailed = errors.New("too many failed authentications from this address")
	errTooMany       = errors.New("limit reached")
	errUnsupported   = errors.New("unsupported media type")
	errInternal      = errors.New("internal error")
	errBodyTimeout   = errors.New("request body too slow")
	// errForbiddenOrigin is a 403 decided by the gateway (CORS, Origin),
	// not by NATS.
	errForbiddenOrigin = errors.New("cross-origin request refused")
)

// problem is an RFC 9457 problem detail.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

// classify maps an error to its status and problem type, once, for both
// HTTP responses and WebSocket error frames.
func classify(err error) (status int, kind string) {
	var mbe *http.MaxBytesError
	switch {
	case errors.Is(err, errMissingToken):
		return http.StatusUnauthorized, "missing-token"
	case errors.Is(err, bridge.ErrUnauthorized):
		return http.StatusUnauthorized, "invalid-token"
	case errors.Is(err, errTokenInURL):
		return http.StatusBadRequest, "token-in-url"
	case errors.Is(err, bridge.ErrBadSubject):
		return http.StatusBadRequest, "bad-subject"
	case errors.Is(err, bridge.ErrBadHeader):
		return http.StatusBadRequest, "bad-header"
	case errors.Is(err, bridge.ErrBadKey):
		return http.StatusBadRequest, "bad-key"
	case errors.Is(err, errBadRequest), errors.Is(err, bridge.ErrInvalid):
		return http.StatusBadRequest, "bad-request"
	case errors.Is(err, bridge.ErrNoStream):
		return http.StatusNotFound, "no-stream"
	case errors.Is(err, bridge.ErrNoBucket):
		return http.StatusNotFound, "no-bucket"
	case errors.Is(err, bridge.ErrNoKey):
		return http.StatusNotFound, "no-key"
	case errors.Is(err, bridge.ErrPrecondition):
		return http.StatusPreconditionFailed, "precondition-failed"
	case errors.Is(err, bridge.ErrSeveralStreams):
		return http.StatusBadRequest, "several-streams"
	case errors.Is(err, bridge.ErrConflict):
		return http.StatusConflict, "conflict"
	case errors.Is(err, bridge.ErrJetStreamUnavailable):
		return http.StatusServiceUnavailable, "jetstream-unavailable"
	case errors.Is(err, bridge.ErrForbidden):
		return http.StatusForbidden, "forbidden"
	case errors.Is(err, errForbiddenOrigin):
		return http.StatusForbidden, "origin-not-allowed"
	case errors.Is(err, errNotFound):
		return http.StatusNotFound, "not-found"
	case errors.Is(err, errMethod):
		return http.StatusMethodNotAllowed, "method-not-allowed"
	case errors.Is(err, bridge.ErrPayloadTooLarge), errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge, "payload-too-large"
	case errors.Is(err, errBodyTimeout):
		return http.StatusRequestTimeout, "request-timeout"
	case errors.Is(err, errUnsupported):
		return http.StatusUnsupportedMediaType, "unsupported-media-type"
	case errors.Is(err, errTooManyFailed), errors.Is(err, errTooMany):
		return http.StatusTooManyRequests, "too-many-requests"
	case errors.Is(err, bridge.ErrNoResponders):
		return http.StatusServiceUnavailable, "no-responders"
	case errors.Is(err, bridge.ErrUnavailable), errors.Is(err, bridge.ErrTooManyTokens), errors.Is(err, errShuttingDown):
		return http.StatusServiceUnavailable, "unavailable"
	case errors.Is(err, bridge.ErrTimeout):
		return http.StatusGatewayTimeout, "timeout"
	case errors.Is(err, context.Canceled):
		return 499, "client-closed-request"
	}
	return http.StatusInternalServerError, "internal"
}

// problemType is the URI of a problem type; the README lists them.
func problemType(kind string) string { return "urn:natsgate:problem:" + kind }

// retryAfter is what Retry-After says for errors worth retrying.
func retryAfter(err error) (seconds int, ok bool) {
	var le *limitedError
	switch {
	case errors.As(err, &le):
		return le.retrySeconds(), true
	case errors.Is(err, bridge.ErrNoResponders):
		return 0, false
	case errors.Is(err, bridge.ErrUnavailable), errors.Is(err, bridge.ErrTooManyTokens), errors.Is(err, errShuttingDown):
		return 1, true
	}
	return 0, false
}

// writeError answers with the problem+json for err. Only unexpected errors
// (500) are logged here; err texts never hold a token.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, kind := classify(err)
	if status == 499 {
		return // the client is gone; nobody to answer
	}
	h := w.Header()
	switch {
	case errors.Is(err, errMissingToken):
		h.Set("WWW-Authenticate", `Bearer realm="natsgate"`)
	case errors.Is(err, bridge.ErrUnauthorized):
		h.Set("WWW-Authenticate", `Bearer realm="natsgate", error="invalid_token"`)
	}
	if s, ok := retryAfter(err); ok {
		h.Set("Retry-After", strconv.Itoa(s))
	}
	detail := err.Error()
	if kind == "bad-subject" {
		detail += subjectHint(r)
	}
	if status == http.StatusInternalServerError {
		loggerFrom(r.Context()).Error("internal error", "err", err)
		detail = "internal error; see the gateway's log for request " + requestID(r.Context())
	}
	setInfo(r.Context(), func(i *reqInfo) { i.errKind = kind })
	if id := requestID(r.Context()); id != "" {
		h.Set("X-Request-Id", id)
	}
	h.Set("Content-Type", "application/problem+json")
	h.Set("Cache-Control", "no-store")
	h.Del("Content-Length")
	w.WriteHeader(status)
	_ = writeJSONBody(w, problem{Type: problemType(kind), Title: http.StatusText(status), Status: status, Detail: detail})
}

// badRequest wraps a message as a 400.
func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errBadRequest, fmt.Sprintf(format, args...))
}
