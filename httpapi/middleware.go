package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/go-chi/chi/v5"
)

type ctxKey int

const (
	ctxLogger ctxKey = iota
	ctxRequestID
	ctxInfo
)

// reqInfo collects what a request's handler learned, for the access log
// and metrics: the token's name (never the token) and the error kind.
type reqInfo struct {
	tokenName string
	errKind   string
}

// requestID returns the request's id, set by withRequest.
func requestID(ctx context.Context) string {
	id, _ := ctx.Value(ctxRequestID).(string)
	return id
}

// loggerFrom returns the request's logger, which carries its request id.
func loggerFrom(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(ctxLogger).(*slog.Logger); ok {
		return l
	}
	return slog.New(slog.DiscardHandler)
}

func setInfo(ctx context.Context, f func(*reqInfo)) {
	if i, ok := ctx.Value(ctxInfo).(*reqInfo); ok {
		f(i)
	}
}

// validRequestID accepts a caller's X-Request-Id when it is short and
// printable ASCII, so it can go into logs as it is.
func validRequestID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}

func typeName(v any) string { return fmt.Sprintf("%T", v) }

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// statusWriter records the status and size of a response.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(p []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(p)
	s.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush, deadlines and Hijack.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// observe gives every request an id (the caller's X-Request-Id when sane),
// a logger carrying it, recovery from panics, an access log line and the
// request metrics. The log line shows the path but never the query string.
func observe(logger *slog.Logger, m *Metrics) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			id := r.Header.Get("X-Request-Id")
			if !validRequestID(id) {
				id = newRequestID()
			}
			w.Header().Set("X-Request-Id", id)
			l := logger.With("request_id", id)
			info := &reqInfo{}
			ctx := context.WithValue(r.Context(), ctxRequestID, id)
			ctx = context.WithValue(ctx, ctxLogger, l)
			ctx = context.WithValue(ctx, ctxInfo, info)
			sw := &statusWriter{ResponseWriter: w}
			r = r.WithContext(ctx)
			defer func() {
				if p := recover(); p != nil {
					if p == http.ErrAbortHandler {
						panic(p)
					}
					l.Error("panic serving request", "panic_type", typeName(p), "stack", string(debug.Stack()))
					if sw.status == 0 && r.Header.Get("Connection") != "Upgrade" {
						writeError(sw, r, errInternal)
					}
				}
				route := chi.RouteContext(r.Context()).RoutePattern()
				if route == "" {
					route = "unmatched"
				}
				status := sw.status
				if status == 0 {
					status = 499
				}
				d := time.Since(start)
				m.observeRequest(r.Method, route, status, d)
				attrs := []any{"method", r.Method, "path", r.URL.Path, "route", route, "status", status,
					"bytes", sw.bytes, "duration", d, "remote", r.RemoteAddr}
				if info.tokenName != "" {
					attrs = append(attrs, "token", info.tokenName)
				}
				if info.errKind != "" {
					attrs = append(attrs, "error", info.errKind)
				}
				l.Info("request", attrs...)
			}()
			next.ServeHTTP(sw, r)
		})
	}
}
