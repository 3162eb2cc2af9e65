package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coreos/go-oidc/v3/oidc"
)

// OIDCConfig configures the verification of OIDC bearer tokens (JWT
// access or ID tokens) by the auth callout service.
type OIDCConfig struct {
	// Issuer is the issuer identifier, exactly as the tokens' iss claim
	// and the discovery document have it. It may have a path and may be
	// plain http:// (local identity providers, tests).
	Issuer string
	// Audience is the value the tokens' aud claim must contain. Required:
	// without it any token the issuer signs for any application would do.
	Audience string
	// PermissionsClaim names the claim holding the NATS permissions, in
	// the tokens file's shape. Default "nats".
	PermissionsClaim string
	// DefaultPermissions apply to a token without the claim. Nil means
	// none: such a token connects but may neither publish nor subscribe.
	DefaultPermissions *Permissions
	// RefreshInterval is the least time between two fetches of the
	// issuer's JWKS: a token signed by a key not in the cache triggers a
	// fetch only if the last one is older. Default 10 s.
	RefreshInterval time.Duration
	// KeyMaxAge is how long fetched keys are trusted before they are
	// fetched again, so a key the issuer withdrew stops verifying. Default
	// 1 hour.
	KeyMaxAge time.Duration
	// HTTPClient fetches the discovery document and the JWKS. Default: a
	// client with a 10 s timeout.
	HTTPClient *http.Client
}

// Permissions are the publish and subscribe permissions of a token, in
// the tokens file's shape.
type Permissions struct {
	Publish   *SubjectPermission `json:"publish,omitempty"`
	Subscribe *SubjectPermission `json:"subscribe,omitempty"`
}

// NoPermissions denies every publish and subscription.
var NoPermissions = &Permissions{
	Publish:   &SubjectPermission{Deny: []string{">"}},
	Subscribe: &SubjectPermission{Deny: []string{">"}},
}

// Bounds on a permissions claim.
const (
	maxPermissionsJSON     = 64 << 10
	maxPermissionsSubjects = 1024
)

// ErrBadPermissions means a permissions claim (or
// --oidc-default-permissions) is not of the tokens file's shape.
var ErrBadPermissions = errors.New("permissions not of the form {\"publish\":{\"allow\":[…],\"deny\":[…]},\"subscribe\":{…}}")

// ParsePermissions parses permissions in the tokens file's shape:
// {"publish":{"allow":[…],"deny":[…]},"subscribe":{…}}. The object may
// also come as a JSON string holding it, for identity providers that only
// emit string claims. Unknown fields are errors, so a typo cannot widen
// access, and every subject must be valid (wildcards allowed). Errors
// wrap ErrBadPermissions and name no value but subjects.
func ParsePermissions(data []byte) (*Permissions, error) {
	if len(data) > maxPermissionsJSON {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrBadPermissions, maxPermissionsJSON)
	}
	data = bytes.TrimSpace(data)
	if len(data) > 0 && data[0] == '"' {
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadPermissions, redactJSONError(data, 0, err))
		}
		data = bytes.TrimSpace([]byte(s))
	}
	if len(data) == 0 || data[0] != '{' {
		return nil, fmt.Errorf("%w: not a JSON object", ErrBadPermissions)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var p Permissions
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadPermissions, redactJSONError(data, dec.InputOffset(), err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: unexpected data after the JSON object", ErrBadPermissions)
	}
	n := 0
	for _, sp := range []struct {
		what string
		p    *SubjectPermission
	}{{"publish", p.Publish}, {"subscribe", p.Subscribe}} {
		if sp.p == nil {
			continue
		}
		for _, s := range slices.Concat(sp.p.Allow, sp.p.Deny) {
			if n++; n > maxPermissionsSubjects {
				return nil, fmt.Errorf("%w: more than %d subjects", ErrBadPermissions, maxPermissionsSubjects)
			}
			if err := ValidateSubscribeSubject(s, 0); err != nil {
				return nil, fmt.Errorf("%w: %s: %v", ErrBadPermissions, sp.what, err)
			}
		}
	}
	return &p, nil
}

// Identity is what a verified OIDC token says about its bearer.
type Identity struct {
	Subject     string       // the sub claim
	Expires     time.Time    // the exp claim
	Permissions *Permissions // from the permissions claim, or the default
	Default     bool         // the token had no permissions claim
}

// Token rejection reasons, for logs and the callout's answer to NATS;
// none holds any part of a token.
var (
	errTokenMalformed   = errors.New("malformed token")
	errTokenAlgorithm   = errors.New("signing algorithm not allowed")
	errTokenSignature   = errors.New("signature not verified by any of the issuer's keys")
	errTokenIssuer      = errors.New("wrong issuer")
	errTokenAudience    = errors.New("wrong audience")
	errTokenExpired     = errors.New("token expired")
	errTokenNotYetValid = errors.New("token not yet valid")
	errTokenNoExpiry    = errors.New("token without exp")
	errIssuerDown       = errors.New("the issuer's keys could not be fetched")
)

// allowedAlgs are the signing algorithms accepted: asymmetric only, so
// neither "none" nor an HMAC keyed with a public key can pass.
var allowedAlgs = []string{
	oidc.RS256, oidc.RS384, oidc.RS512,
	oidc.ES256, oidc.ES384, oidc.ES512,
	oidc.PS256, oidc.PS384, oidc.PS512,
	oidc.EdDSA,
}

// maxJWTLen bounds the tokens verified.
const maxJWTLen = 16 << 10

// OIDCVerifier verifies OIDC bearer tokens against an issuer: discovery
// and key set through go-oidc, with fetches of the key set rate-limited.
type OIDCVerifier struct {
	cfg      OIDCConfig
	ctx      context.Context // carries the rate-limited HTTP client for go-oidc
	provider *oidc.Provider

	mu      sync.Mutex
	current *oidc.IDTokenVerifier
	created time.Time
}

// NewOIDCVerifier discovers the issuer (its /.well-known/openid-configuration,
// which must name the same issuer) and returns a verifier. The keys are
// fetched on first use.
func NewOIDCVerifier(ctx context.Context, cfg OIDCConfig) (*OIDCVerifier, error) {
	switch {
	case cfg.Issuer == "":
		return nil, errors.New("oidc: no issuer")
	case cfg.Audience == "":
		return nil, errors.New("oidc: no audience (set the aud value your identity provider puts in tokens for this gateway)")
	}
	if cfg.PermissionsClaim == "" {
		cfg.PermissionsClaim = "nats"
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = 10 * time.Second
	}
	if cfg.KeyMaxAge <= 0 {
		cfg.KeyMaxAge = time.Hour
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	limited := *cfg.HTTPClient
	next := limited.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	limited.Transport = &fetchLimiter{next: next, every: cfg.RefreshInterval, fetched: map[string]*fetched{}}
	v := &OIDCVerifier{cfg: cfg, ctx: oidc.ClientContext(context.WithoutCancel(ctx), &limited)}
	dctx, cancel := context.WithTimeout(oidc.ClientContext(ctx, &limited), 15*time.Second)
	defer cancel()
	p, err := oidc.NewProvider(dctx, cfg.Issuer)
	if err != nil {
		return nil, fmt.Errorf("oidc discovery for %s: %w", cfg.Issuer, err)
	}
	v.provider = p
	return v, nil
}

// verifier returns go-oidc's verifier, with a fresh key set once the
// current one is older than KeyMaxAge.
func (v *OIDCVerifier) verifier() *oidc.IDTokenVerifier {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.current == nil || time.Since(v.created) > v.cfg.KeyMaxAge {
		v.current = v.provider.VerifierContext(v.ctx, &oidc.Config{
			ClientID:             v.cfg.Audience,
			SupportedSigningAlgs: allowedAlgs,
		})
		v.created = time.Now()
	}
	return v.current
}

// Verify checks a token's signature against the issuer's keys, its
// algorithm, iss, aud, exp and nbf (5 minutes leeway), and reads its
// permissions claim. Errors are safe to log: no part of the token.
func (v *OIDCVerifier) Verify(ctx context.Context, raw string) (*Identity, error) {
	if len(raw) > maxJWTLen || strings.Count(raw, ".") != 2 {
		return nil, errTokenMalformed
	}
	tok, err := v.verifier().Verify(ctx, raw)
	if err != nil {
		return nil, classifyOIDCError(err)
	}
	if tok.Expiry.IsZero() {
		return nil, errTokenNoExpiry
	}
	var claims map[string]json.RawMessage
	if err := tok.Claims(&claims); err != nil {
		return nil, errTokenMalformed
	}
	id := &Identity{Subject: tok.Subject, Expires: tok.Expiry}
	pc, ok := claims[v.cfg.PermissionsClaim]
	if !ok || string(pc) == "null" {
		id.Permissions, id.Default = v.cfg.DefaultPermissions, true
		if id.Permissions == nil {
			id.Permissions = NoPermissions
		}
		return id, nil
	}
	if id.Permissions, err = ParsePermissions(pc); err != nil {
		return id, fmt.Errorf("claim %q: %w", v.cfg.PermissionsClaim, err)
	}
	return id, nil
}

// classifyOIDCError maps go-oidc's errors, whose texts can quote claims,
// to the fixed reasons above.
func classifyOIDCError(err error) error {
	var exp *oidc.TokenExpiredError
	if errors.As(err, &exp) {
		return errTokenExpired
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "fetching keys"):
		return errIssuerDown
	case strings.Contains(msg, "unexpected signature algorithm"):
		return errTokenAlgorithm
	case strings.Contains(msg, "failed to verify signature"):
		return errTokenSignature
	case strings.Contains(msg, "issued by a different provider"):
		return errTokenIssuer
	case strings.Contains(msg, "expected audience"):
		return errTokenAudience
	case strings.Contains(msg, "before the nbf"):
		return errTokenNotYetValid
	}
	return errTokenMalformed
}

// fetchLimiter answers a GET for a URL fetched less than every ago with
// the stored answer, so the issuer sees at most one fetch of its key set
// per interval, however many tokens name unknown keys. go-oidc's
// RemoteKeySet refetches for every unknown kid (only concurrent fetches
// are shared), and for a known kid whose signature fails.
type fetchLimiter struct {
	next  http.RoundTripper
	every time.Duration

	mu      sync.Mutex // held across a fetch: one at a time
	fetched map[string]*fetched
}

type fetched struct {
	at     time.Time
	status int
	header http.Header
	body   []byte
	err    error
}

// maxFetchBody bounds a discovery document or key set.
const maxFetchBody = 1 << 20

func (l *fetchLimiter) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method != http.MethodGet {
		return l.next.RoundTrip(req)
	}
	u := req.URL.String()
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.fetched[u]
	if f == nil || time.Since(f.at) >= l.every {
		f = &fetched{at: time.Now()}
		resp, err := l.next.RoundTrip(req)
		if err == nil {
			f.status, f.header = resp.StatusCode, resp.Header
			f.body, err = io.ReadAll(io.LimitReader(resp.Body, maxFetchBody+1))
			resp.Body.Close()
			if err == nil && len(f.body) > maxFetchBody {
				err = fmt.Errorf("%s: answer larger than %d bytes", u, maxFetchBody)
			}
		}
		f.err = err
		if prev := l.fetched[u]; err != nil && prev != nil && prev.err == nil {
			// Keep serving the last good answer while the issuer is
			// unreachable; try again after the interval.
			prev.at = f.at
			f = prev
		}
		l.fetched[u] = f
	}
	if f.err != nil {
		return nil, f.err
	}
	return &http.Response{
		Status:        http.StatusText(f.status),
		StatusCode:    f.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        f.header.Clone(),
		Body:          io.NopCloser(bytes.NewReader(f.body)),
		ContentLength: int64(len(f.body)),
		Request:       req,
	}, nil
}

// displayName is a bounded, printable form of an OIDC subject for logs.
func displayName(sub string) string {
	var b strings.Builder
	b.WriteString("oidc:")
	for _, r := range sub {
		if b.Len() >= 64 {
			b.WriteString("…")
			break
		}
		if r < ' ' || r == 0x7f || r == utf8.RuneError || r == '"' || r == '\\' {
			r = '_'
		}
		b.WriteRune(r)
	}
	return b.String()
}
