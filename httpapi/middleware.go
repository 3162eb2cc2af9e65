package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
)

type ctxKey struct{}

// requestCtx is a request's context inside the router: its parent with
// chi's routing context and the request's reqInfo in one value, so a
// request costs one context and one copy of the request where chi and
// observe would each make their own (Server.ServeHTTP, observe).
type requestCtx struct {
	context.Context
	route *chi.Context
	info  *reqInfo // set by observe
}

type requestCtxKey struct{}

func (c *requestCtx) Value(key any) any {
	switch key {
	case chi.RouteCtxKey:
		return c.route
	case requestCtxKey{}:
		return c
	case ctxKey{}:
		if c.info != nil {
			return c.info
		}
	}
	return c.Context.Value(key)
}

// reqInfo is a request's context value: its id, and what its handler
// learned for the access log and metrics: the token's name (never the
// token) and the error kind.
type reqInfo struct {
	id        string // see ID
	n         uint64 // our id's number, when the caller gave none
	base      *slog.Logger
	logger    *slog.Logger // base with the request id, made on first use
	tokenName string
	errKind   string
}

// ID is the request's id: the caller's, or one of ours, formatted on
// first use (most requests succeed unlogged and never need it).
func (i *reqInfo) ID() string {
	if i.id == "" {
		i.id = requestIDs.prefix + strconv.FormatUint(i.n, 36)
	}
	return i.id
}

func infoFrom(ctx context.Context) *reqInfo {
	i, _ := ctx.Value(ctxKey{}).(*reqInfo)
	return i
}

// requestID returns the request's id, set by observe.
func requestID(ctx context.Context) string {
	if i := infoFrom(ctx); i != nil {
		return i.ID()
	}
	return ""
}

// loggerFrom returns the request's logger, which carries its request id.
func loggerFrom(ctx context.Context) *slog.Logger {
	i := infoFrom(ctx)
	if i == nil {
		return slog.New(slog.DiscardHandler)
	}
	if i.logger == nil {
		i.logger = i.base.With("request_id", i.ID())
	}
	return i.logger
}

func setInfo(ctx context.Context, f func(*reqInfo)) {
	if i := infoFrom(ctx); i != nil {
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

// requestIDs makes ids unique within a process (a counter) and across
// restarts and replicas (a random prefix), without a random read per
// request.
var requestIDs = struct {
	prefix string
	n      atomic.Uint64
}{prefix: func() string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:]) + "-"
}()}

// observed is what observe keeps of a request, in one allocation.
type observed struct {
	info reqInfo
	sw   statusWriter
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

// observe gives every request an id (the caller's X-Request-Id when sane,
// echoed),
// a logger carrying it, recovery from panics, an access log line and the
// request metrics. The log line shows the path but never the query string.
func observe(logger *slog.Logger, m *Metrics) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			// A caller's id is echoed; an id of ours is sent with errors
			// only (writeError), sparing every success a header.
			o := &observed{info: reqInfo{base: logger}, sw: statusWriter{ResponseWriter: w}}
			info, sw := &o.info, &o.sw
			if id := r.Header.Get("X-Request-Id"); validRequestID(id) {
				w.Header().Set("X-Request-Id", id)
				info.id = id
			} else {
				info.n = requestIDs.n.Add(1)
			}
			if rc, _ := r.Context().Value(requestCtxKey{}).(*requestCtx); rc != nil && rc.info == nil {
				rc.info = info
			} else {
				r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, info))
			}
			defer func() {
				if p := recover(); p != nil {
					if p == http.ErrAbortHandler {
						panic(p)
					}
					loggerFrom(r.Context()).Error("panic serving request", "panic_type", typeName(p), "stack", string(debug.Stack()))
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
				if !logger.Enabled(r.Context(), slog.LevelInfo) {
					return
				}
				attrs := make([]slog.Attr, 0, 11)
				attrs = append(attrs, slog.String("request_id", info.ID()), slog.String("method", r.Method), slog.String("path", r.URL.Path),
					slog.String("route", route), slog.Int("status", status), slog.Int64("bytes", sw.bytes),
					slog.Duration("duration", d), slog.String("remote", r.RemoteAddr))
				if f := forwardedFrom(r.Context()); f != nil {
					attrs = append(attrs, slog.String("proxy", f.peer))
				}
				if info.tokenName != "" {
					attrs = append(attrs, slog.String("token", info.tokenName))
				}
				if info.errKind != "" {
					attrs = append(attrs, slog.String("error", info.errKind))
				}
				logger.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
			}()
			next.ServeHTTP(sw, r)
		})
	}
}
