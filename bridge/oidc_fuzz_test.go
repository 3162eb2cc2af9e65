package bridge

import (
	"context"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/natsgate/natsgate/internal/oidctest"
)

// FuzzParsePermissions feeds the permissions-claim parser what a token's
// claim may hold. What it accepts has only valid subjects, within the
// bound, and reads back the same after encoding.
func FuzzParsePermissions(f *testing.F) {
	for _, s := range []string{
		`{}`,
		`{"publish":{"allow":["orders.>"],"deny":["orders.secret"]},"subscribe":{"allow":["orders.>","_INBOX.>"]}}`,
		`"{\"subscribe\":{\"deny\":[\">\"]}}"`,
		`{"publish":{"allow":[]},"subscribe":null}`,
		`{"publish":["a"]}`, `{"publish":{"allow":"a"}}`, `[]`, `null`, `""`, `"\u0000"`,
		`{"publish":{"allow":["a b"]}}`, `{"publish":{"allow":["a.>.b"]}}`, `{"pub":{}}`,
		`{"publish":{"allow":["é.ü","*.x"]}} `, `{} []`, `{"publish":{"allow":["` + strings.Repeat("a.", 200) + `"]}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePermissions(data)
		if err != nil {
			return
		}
		n := 0
		for _, sp := range []*SubjectPermission{p.Publish, p.Subscribe} {
			if sp == nil {
				continue
			}
			for _, s := range slices.Concat(sp.Allow, sp.Deny) {
				n++
				if err := ValidateSubscribeSubject(s, 0); err != nil {
					t.Fatalf("accepted the subject %q: %v", s, err)
				}
			}
		}
		if n > maxPermissionsSubjects {
			t.Fatalf("accepted %d subjects", n)
		}
		again, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		q, err := ParsePermissions(again)
		if err != nil || !reflect.DeepEqual(normalise(p), normalise(q)) {
			t.Fatalf("%s read back as %+v, %v", again, q, err)
		}
	})
}

// normalise makes empty and absent lists alike, as NATS treats them,
// each on its own (an empty allow beside a deny is encoded as no allow).
func normalise(p *Permissions) Permissions {
	list := func(l []string) []string {
		if len(l) == 0 {
			return nil
		}
		return slices.Clip(l)
	}
	n := func(sp *SubjectPermission) *SubjectPermission {
		if sp == nil || (len(sp.Allow) == 0 && len(sp.Deny) == 0) {
			return nil
		}
		return &SubjectPermission{Allow: list(sp.Allow), Deny: list(sp.Deny)}
	}
	return Permissions{Publish: n(p.Publish), Subscribe: n(p.Subscribe)}
}

// FuzzOIDCVerify feeds the verifier arbitrary tokens, seeded with real
// ones cut and altered: none is accepted (only the issuer's key can sign)
// and none panics the JWS parser.
func FuzzOIDCVerify(f *testing.F) {
	iss := oidctest.New(f)
	v := newTestVerifier(f, iss)
	good := iss.Sign(f, "rsa-1", iss.Claims("fuzz", testAudience, time.Hour))
	for _, s := range []string{
		good[:len(good)-2] + "AA",
		tamper(good),
		oidctest.Unsigned(f, "rsa-1", iss.Claims("fuzz", testAudience, time.Hour)),
		iss.SignHS256WithPublicKey(f, "rsa-1", iss.Claims("fuzz", testAudience, time.Hour)),
		"eyJhbGciOiJSUzI1NiJ9.e30.", "eyJ..", "...", "eyJhbGciOiJub25lIn0.e30.", "a.b.c",
		`eyJhbGciOiJSUzI1NiIsImNyaXQiOlsiYiJdLCJiIjp0cnVlfQ.e30.x`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if id, err := v.Verify(ctx, tok); err == nil {
			t.Fatalf("accepted a token nobody signed: %+v", id)
		}
	})
}
