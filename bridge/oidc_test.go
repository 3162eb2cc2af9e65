package bridge

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/natsgate/natsgate/internal/oidctest"
)

const testAudience = "natsgate-test"

func newTestVerifier(t testing.TB, iss *oidctest.Issuer, mod ...func(*OIDCConfig)) *OIDCVerifier {
	t.Helper()
	cfg := OIDCConfig{Issuer: iss.URL, Audience: testAudience}
	for _, f := range mod {
		f(&cfg)
	}
	v, err := NewOIDCVerifier(context.Background(), cfg)
	if err != nil {
		t.Fatalf("NewOIDCVerifier: %v", err)
	}
	return v
}

func withPerms(c map[string]any, perms any) map[string]any {
	c["nats"] = perms
	return c
}

// TestOIDCVerifierRefusesEachBadTokenForItsReason checks every kind of bad
// token is refused, and for the right reason: a verifier refusing
// everything as malformed would not pass.
func TestOIDCVerifierRefusesEachBadTokenForItsReason(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	v := newTestVerifier(t, iss)
	iss.AddKey(t, "unpublished", jose.RS256)
	claims := func() map[string]any { return iss.Claims("alice", testAudience, time.Minute) }
	mod := func(f func(map[string]any)) map[string]any { c := claims(); f(c); return c }
	for _, tc := range []struct {
		name  string
		token string
		want  error
	}{
		{"unknown key", iss.Sign(t, "unpublished", claims()), errTokenSignature},
		{"alg none", oidctest.Unsigned(t, "rsa-1", claims()), errTokenAlgorithm},
		{"HS256 keyed with the public key", iss.SignHS256WithPublicKey(t, "rsa-1", claims()), errTokenAlgorithm},
		{"wrong issuer", iss.Sign(t, "rsa-1", mod(func(c map[string]any) { c["iss"] = iss.URL + "x" })), errTokenIssuer},
		{"issuer without its path", iss.Sign(t, "rsa-1", mod(func(c map[string]any) {
			c["iss"] = strings.TrimSuffix(iss.URL, oidctest.Path)
		})), errTokenIssuer},
		{"wrong audience", iss.Sign(t, "rsa-1", mod(func(c map[string]any) { c["aud"] = "other-app" })), errTokenAudience},
		{"expired", iss.Sign(t, "rsa-1", mod(func(c map[string]any) { c["exp"] = time.Now().Add(-time.Second).Unix() })), errTokenExpired},
		{"no exp", iss.Sign(t, "rsa-1", mod(func(c map[string]any) { delete(c, "exp") })), errTokenExpired},
		{"not yet valid", iss.Sign(t, "rsa-1", mod(func(c map[string]any) { c["nbf"] = time.Now().Add(6 * time.Minute).Unix() })), errTokenNotYetValid},
		{"malformed", "eyJhbGciOiJSUzI1NiJ9.not-base64!.x", errTokenMalformed},
		{"two parts", "eyJhbGciOiJSUzI1NiJ9.e30", errTokenMalformed},
		{"64 KiB", "eyJ" + strings.Repeat("a", 64<<10) + ".e30.x", errTokenMalformed},
		{"tampered payload", tamper(iss.Sign(t, "rsa-1", claims())), errTokenSignature},
		{"bad permissions claim", iss.Sign(t, "rsa-1", withPerms(claims(), map[string]any{"publish": []string{"x"}})), ErrBadPermissions},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := v.Verify(context.Background(), tc.token)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify: %v, want %v", err, tc.want)
			}
		})
	}
	// Within the leeway, nbf is fine.
	if _, err := v.Verify(context.Background(), iss.Sign(t, "rsa-1", mod(func(c map[string]any) {
		c["nbf"] = time.Now().Add(time.Minute).Unix()
	}))); err != nil {
		t.Fatalf("nbf one minute ahead (inside the leeway): %v", err)
	}
}

// tamper changes the payload of a signed JWT, keeping its signature.
func tamper(tok string) string {
	parts := strings.Split(tok, ".")
	p := []byte(parts[1])
	if p[5] == 'A' {
		p[5] = 'B'
	} else {
		p[5] = 'A'
	}
	return parts[0] + "." + string(p) + "." + parts[2]
}

func TestOIDCVerifierAcceptsRS256AndES256WithTheirPermissions(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	v := newTestVerifier(t, iss, func(c *OIDCConfig) {
		c.DefaultPermissions = &Permissions{Subscribe: &SubjectPermission{Allow: []string{"public.>"}}}
	})
	perms := map[string]any{"publish": map[string]any{"allow": []string{"orders.>"}, "deny": []string{"orders.secret"}},
		"subscribe": map[string]any{"allow": []string{"orders.>", "_INBOX.>"}}}
	for _, kid := range []string{"rsa-1", "ec-1"} {
		c := withPerms(iss.Claims("alice", testAudience, time.Minute), perms)
		id, err := v.Verify(context.Background(), iss.Sign(t, kid, c))
		if err != nil {
			t.Fatalf("%s: %v", kid, err)
		}
		if id.Subject != "alice" || id.Default || !id.Expires.Equal(time.Unix(c["exp"].(int64), 0)) {
			t.Fatalf("%s: identity %+v", kid, id)
		}
		if got := fmt.Sprint(id.Permissions.Publish, id.Permissions.Subscribe); got != "&{[orders.>] [orders.secret]} &{[orders.> _INBOX.>] []}" {
			t.Fatalf("%s: permissions %s", kid, got)
		}
	}
	// A string claim holding the object is accepted too.
	c := withPerms(iss.Claims("bob", testAudience, time.Minute), `{"publish":{"allow":["a.b"]}}`)
	id, err := v.Verify(context.Background(), iss.Sign(t, "rsa-1", c))
	if err != nil || id.Permissions.Publish.Allow[0] != "a.b" {
		t.Fatalf("string claim: %+v %v", id, err)
	}
	// No claim: the default.
	id, err = v.Verify(context.Background(), iss.Sign(t, "ec-1", iss.Claims("carol", testAudience, time.Minute)))
	if err != nil || !id.Default || id.Permissions.Subscribe.Allow[0] != "public.>" {
		t.Fatalf("no claim: %+v %v", id, err)
	}
	// Audience in a list.
	c = iss.Claims("dave", testAudience, time.Minute)
	c["aud"] = []string{"account", testAudience}
	if _, err := v.Verify(context.Background(), iss.Sign(t, "rsa-1", c)); err != nil {
		t.Fatalf("aud list: %v", err)
	}
}

// TestOIDCUnknownKeysFetchTheKeySetAtMostOncePerInterval floods the
// verifier with tokens naming unknown keys and with forged signatures on
// a known key, concurrently, and counts the issuer's JWKS fetches.
func TestOIDCUnknownKeysFetchTheKeySetAtMostOncePerInterval(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	v := newTestVerifier(t, iss) // the default interval, 10 s
	if _, err := v.Verify(context.Background(), iss.Sign(t, "rsa-1", iss.Claims("a", testAudience, time.Minute))); err != nil {
		t.Fatal(err)
	}
	before := iss.JWKSFetches()
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			kid := fmt.Sprintf("bogus-%d", i)
			iss.AddKey(t, kid, jose.ES256)
			tok := iss.Sign(t, kid, iss.Claims("a", testAudience, time.Minute))
			if i%2 == 0 {
				tok = tamper(iss.Sign(t, "rsa-1", iss.Claims("a", testAudience, time.Minute)))
			}
			if _, err := v.Verify(context.Background(), tok); !errors.Is(err, errTokenSignature) {
				t.Errorf("bogus token: %v", err)
			}
		})
	}
	wg.Wait()
	if got := iss.JWKSFetches() - before; got > 1 {
		t.Fatalf("200 tokens with unknown keys or forged signatures made %d JWKS fetches, want at most 1 per 10 s", got)
	}
}

// TestOIDCNewlyPublishedKeyIsAcceptedWithin30s runs with the default
// interval: a token signed by a key the issuer published after the last
// fetch is refused for at most the interval, then accepted.
func TestOIDCNewlyPublishedKeyIsAcceptedWithin30s(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	v := newTestVerifier(t, iss)
	if _, err := v.Verify(context.Background(), iss.Sign(t, "rsa-1", iss.Claims("a", testAudience, time.Minute))); err != nil {
		t.Fatal(err)
	}
	iss.Publish(iss.AddKey(t, "rsa-2", jose.RS256))
	start := time.Now()
	for {
		_, err := v.Verify(context.Background(), iss.Sign(t, "rsa-2", iss.Claims("a", testAudience, time.Minute)))
		if err == nil {
			break
		}
		if !errors.Is(err, errTokenSignature) {
			t.Fatalf("new key: %v", err)
		}
		if time.Since(start) > 30*time.Second {
			t.Fatal("a newly published key was still refused after 30 s")
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("new key accepted after %v, %d JWKS fetches", time.Since(start).Round(time.Millisecond), iss.JWKSFetches())
	if got := iss.JWKSFetches(); got > 3 {
		t.Fatalf("%d JWKS fetches for one rotation, want at most 3", got)
	}
}

func TestOIDCWithdrawnKeyStopsVerifyingAfterKeyMaxAge(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	v := newTestVerifier(t, iss, func(c *OIDCConfig) {
		c.RefreshInterval = 100 * time.Millisecond
		c.KeyMaxAge = 300 * time.Millisecond
	})
	tok := func() string { return iss.Sign(t, "ec-1", iss.Claims("a", testAudience, time.Minute)) }
	if _, err := v.Verify(context.Background(), tok()); err != nil {
		t.Fatal(err)
	}
	iss.Withdraw("ec-1")
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := v.Verify(context.Background(), tok())
		if errors.Is(err, errTokenSignature) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a withdrawn key still verifies after 5 s (KeyMaxAge 300 ms): %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestOIDCVerifierNeedsAnAudienceAndAReachableIssuer(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	if _, err := NewOIDCVerifier(context.Background(), OIDCConfig{Issuer: iss.URL}); err == nil || !strings.Contains(err.Error(), "audience") {
		t.Fatalf("no audience: %v", err)
	}
	if _, err := NewOIDCVerifier(context.Background(), OIDCConfig{Issuer: iss.URL + "/other", Audience: "x"}); err == nil {
		t.Fatal("an issuer whose discovery document is missing was accepted")
	}
}

func TestParsePermissions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{`{}`, true},
		{`{"publish":{"allow":["a.>"],"deny":["a.b"]},"subscribe":{"allow":["_INBOX.>"]}}`, true},
		{`"{\"subscribe\":{\"deny\":[\">\"]}}"`, true},
		{` {"publish":{}} `, true},
		{`[]`, false},
		{`"x"`, false},
		{`null`, false},
		{`{"publish":["a"]}`, false},
		{`{"publish":{"allow":"a"}}`, false},
		{`{"pub":{"allow":["a"]}}`, false},
		{`{"publish":{"allow":["a b"]}}`, false},
		{`{"publish":{"allow":["a..b"]}}`, false},
		{`{"publish":{"allow":[1]}}`, false},
		{`{} {}`, false},
		{`{"publish":{"allow":["a"]}`, false},
		{`{"publish":{"allow":[` + strings.Repeat(`"a",`, maxPermissionsSubjects) + `"a"]}}`, false},
	} {
		_, err := ParsePermissions([]byte(tc.in))
		if (err == nil) != tc.ok {
			t.Errorf("ParsePermissions(%.60s): %v, want ok=%v", tc.in, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrBadPermissions) {
			t.Errorf("ParsePermissions(%.60s): %v does not wrap ErrBadPermissions", tc.in, err)
		}
	}
}
