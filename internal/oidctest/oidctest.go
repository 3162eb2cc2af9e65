// Package oidctest runs an OpenID Connect issuer for tests: a real HTTP
// server on loopback serving a discovery document and a JWKS, with RS256
// and ES256 keys that tests publish, withdraw and sign with, and a count
// of the JWKS fetches it answered.
package oidctest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Path is the issuer URL's path, Keycloak-like, so the tests cover an
// issuer with a path.
const Path = "/realms/test"

// Issuer is a test OpenID Connect issuer.
type Issuer struct {
	// URL is the issuer identifier: plain http://, with a path.
	URL string

	srv         *httptest.Server
	jwksFetches atomic.Int64

	mu        sync.Mutex
	keys      map[string]*key
	published []string // kids in the JWKS, in order
	n         int
}

type key struct {
	alg  jose.SignatureAlgorithm
	priv crypto.Signer
}

// New starts an issuer with two published keys, "rsa-1" (RS256) and
// "ec-1" (ES256), and stops it when the test ends.
func New(t testing.TB) *Issuer {
	t.Helper()
	i := &Issuer{keys: map[string]*key{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+Path+"/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                i.URL,
			"jwks_uri":                              i.URL + "/protocol/openid-connect/certs",
			"authorization_endpoint":                i.URL + "/protocol/openid-connect/auth",
			"token_endpoint":                        i.URL + "/protocol/openid-connect/token",
			"id_token_signing_alg_values_supported": []string{"RS256", "ES256"},
		})
	})
	mux.HandleFunc("GET "+Path+"/protocol/openid-connect/certs", func(w http.ResponseWriter, r *http.Request) {
		i.jwksFetches.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(i.jwks())
	})
	i.srv = httptest.NewServer(mux)
	i.URL = i.srv.URL + Path
	t.Cleanup(i.srv.Close)
	i.Publish(i.AddKey(t, "rsa-1", jose.RS256))
	i.Publish(i.AddKey(t, "ec-1", jose.ES256))
	return i
}

// AddKey makes a key (RS256 or ES256) under kid, not yet published.
func (i *Issuer) AddKey(t testing.TB, kid string, alg jose.SignatureAlgorithm) string {
	t.Helper()
	var (
		priv crypto.Signer
		err  error
	)
	switch alg {
	case jose.RS256:
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case jose.ES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		t.Fatalf("oidctest: unsupported algorithm %s", alg)
	}
	if err != nil {
		t.Fatal(err)
	}
	i.mu.Lock()
	i.keys[kid] = &key{alg: alg, priv: priv}
	i.mu.Unlock()
	return kid
}

// Publish adds kid to the JWKS.
func (i *Issuer) Publish(kid string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.published = append(i.published, kid)
}

// Withdraw removes kid from the JWKS (it can still sign).
func (i *Issuer) Withdraw(kid string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	for j, k := range i.published {
		if k == kid {
			i.published = append(i.published[:j], i.published[j+1:]...)
			return
		}
	}
}

func (i *Issuer) jwks() jose.JSONWebKeySet {
	i.mu.Lock()
	defer i.mu.Unlock()
	var set jose.JSONWebKeySet
	for _, kid := range i.published {
		k := i.keys[kid]
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.priv.Public(), KeyID: kid, Algorithm: string(k.alg), Use: "sig"})
	}
	return set
}

// JWKSFetches is how many times the JWKS was fetched.
func (i *Issuer) JWKSFetches() int64 { return i.jwksFetches.Load() }

// Claims returns the claims of a valid access token for audience, valid
// for ttl, with a unique jti so that every token is distinct.
func (i *Issuer) Claims(sub, audience string, ttl time.Duration) map[string]any {
	i.mu.Lock()
	i.n++
	n := i.n
	i.mu.Unlock()
	now := time.Now()
	return map[string]any{
		"iss": i.URL,
		"sub": sub,
		"aud": audience,
		"iat": now.Unix(),
		"nbf": now.Add(-time.Second).Unix(),
		"exp": now.Add(ttl).Unix(),
		"jti": fmt.Sprintf("jti-%d-%d", n, now.UnixNano()),
	}
}

// Sign signs claims with kid's key.
func (i *Issuer) Sign(t testing.TB, kid string, claims map[string]any) string {
	t.Helper()
	i.mu.Lock()
	k := i.keys[kid]
	i.mu.Unlock()
	if k == nil {
		t.Fatalf("oidctest: no key %q", kid)
	}
	opts := (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid)
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: k.alg, Key: k.priv}, opts)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Unsigned returns claims as a JWT with "alg":"none" and no signature.
func Unsigned(t testing.TB, kid string, claims map[string]any) string {
	t.Helper()
	return compact(t, map[string]any{"alg": "none", "typ": "JWT", "kid": kid}, claims) + "."
}

// SignHS256WithPublicKey returns claims signed with HMAC-SHA256 whose
// secret is kid's public key in PEM: the classic key-confusion attack on
// verifiers that take the algorithm from the token.
func (i *Issuer) SignHS256WithPublicKey(t testing.TB, kid string, claims map[string]any) string {
	t.Helper()
	i.mu.Lock()
	k := i.keys[kid]
	i.mu.Unlock()
	der, err := x509.MarshalPKIXPublicKey(k.priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	secret := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	signing := compact(t, map[string]any{"alg": "HS256", "typ": "JWT", "kid": kid}, claims)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(signing))
	return signing + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

func compact(t testing.TB, header, claims map[string]any) string {
	t.Helper()
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	c, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
}

// SignSized signs claims with kid's key, padded with a "pad" claim so
// that the token has size bytes (within 4: base64 moves in steps).
func (i *Issuer) SignSized(t testing.TB, kid string, claims map[string]any, size int) string {
	t.Helper()
	n := max(size*3/4-600, 0)
	for range 100 {
		claims["pad"] = strings.Repeat("p", n)
		tok := i.Sign(t, kid, claims)
		d := size - len(tok)
		switch {
		case d >= 0 && d <= 4:
			return tok
		case d > 0:
			n += max(d*3/4, 1)
		default:
			n += min(d*3/4, -1)
		}
		if n < 0 {
			break
		}
	}
	t.Fatalf("oidctest: no token of %d bytes", size)
	return ""
}
