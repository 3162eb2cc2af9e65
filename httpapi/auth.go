package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/natsgate/natsgate/bridge"
)

// maxTokenLen bounds the tokens the gateway will pass on to NATS: room for
// OIDC access tokens with many claims (the embedded server's
// max_control_line is raised to match).
const maxTokenLen = 16 << 10

// urlTokenParams are query parameters that carry credentials in other
// gateways (?authorization= is how Synadia's clients put a key in an
// EventSource URL); here they are refused, never read.
var urlTokenParams = []string{"token", "access_token", "auth_token", "bearer", "authorization", "api_key", "apikey"}

// tokenInURL reports whether a URL carries credentials: userinfo or one of
// urlTokenParams (any letter case).
func tokenInURL(r *http.Request) bool {
	if r.URL.User != nil {
		return true
	}
	if r.URL.RawQuery == "" {
		return false
	}
	for k := range r.URL.Query() {
		for _, p := range urlTokenParams {
			if strings.EqualFold(k, p) {
				return true
			}
		}
	}
	return false
}

// refuseURLTokens answers 400 to any request with credentials in its URL,
// before a handler (or NATS) sees it.
func refuseURLTokens(m *Metrics) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if tokenInURL(r) {
				m.authFailures.WithLabelValues("token_in_url").Inc()
				writeError(w, r, errTokenInURL)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// bearerToken extracts the token of an "Authorization: Bearer <token>"
// header, or of the bare form "Authorization: <token>" (one word, no
// scheme) that Synadia's HTTP gateway clients send. Any other scheme
// (Basic, …) is refused. Error texts never include the header's value.
func bearerToken(r *http.Request) (string, error) {
	vals := r.Header.Values("Authorization")
	switch {
	case len(vals) == 0:
		return "", errMissingToken
	case len(vals) > 1:
		return "", fmt.Errorf("%w (more than one Authorization header)", errMissingToken)
	}
	v := strings.TrimSpace(vals[0])
	scheme, tok, ok := strings.Cut(v, " ")
	switch {
	case !ok && !strings.EqualFold(v, "Bearer"):
		tok = v // the bare form
	case !strings.EqualFold(scheme, "Bearer"):
		return "", fmt.Errorf("%w (the Authorization header does not use the Bearer scheme)", errMissingToken)
	}
	return checkToken(strings.TrimSpace(tok))
}

// checkToken applies the gateway's only checks on a token's form: present,
// bounded, printable. Whether it is valid is for NATS to say.
func checkToken(tok string) (string, error) {
	if tok == "" {
		return "", fmt.Errorf("%w (empty token)", errMissingToken)
	}
	if len(tok) > maxTokenLen {
		return "", fmt.Errorf("%w: token longer than %d bytes", bridge.ErrUnauthorized, maxTokenLen)
	}
	for i := 0; i < len(tok); i++ {
		if tok[i] < ' ' || tok[i] == 0x7f {
			return "", fmt.Errorf("%w: token has control characters", bridge.ErrUnauthorized)
		}
	}
	return tok, nil
}

// connect gets the NATS connection for a token and notes, for logs and
// metrics, the token's name and any failure.
//
// A token whose connection the pool already holds was accepted by NATS
// and is not asked about again, so it passes even while its address is
// limited: someone else's failures behind the same NAT do not lock it
// out. Every other attempt holds a place under the address's failure
// limit while it is in flight, so simultaneous bad tokens cannot outrun
// the limit.
func (s *Server) connect(ctx context.Context, remote, token string) (*bridge.Conn, error) {
	c := s.broker.AcquireHeld(token)
	if c == nil {
		done, err := s.failures.begin(ctx, remote, bridge.KeyOf(token))
		if err != nil {
			s.metrics.authFailures.WithLabelValues("rate_limited").Inc()
			return nil, err
		}
		c, err = s.broker.Acquire(ctx, token)
		rejected := errors.Is(err, bridge.ErrUnauthorized)
		done(rejected)
		if rejected {
			s.metrics.authFailures.WithLabelValues("rejected").Inc()
		}
		if err != nil {
			return nil, err
		}
	}
	setInfo(ctx, func(i *reqInfo) { i.tokenName = c.Name() })
	return c, nil
}

// bearer is bearerToken, counting a missing token.
func (s *Server) bearer(r *http.Request) (string, error) {
	tok, err := bearerToken(r)
	if err != nil {
		s.metrics.authFailures.WithLabelValues("missing").Inc()
	}
	return tok, err
}
