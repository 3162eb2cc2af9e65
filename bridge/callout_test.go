package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsgate/natsgate/internal/gatewayproc"
	"github.com/natsgate/natsgate/internal/oidctest"
)

// ordersPerms is a permissions claim: publish and subscribe under orders.>
// (and receive replies), except orders.secret.
var ordersPerms = map[string]any{
	"publish":   map[string]any{"allow": []string{"orders.>"}, "deny": []string{"orders.secret"}},
	"subscribe": map[string]any{"allow": []string{"orders.>", "_INBOX.>"}},
}

// startOIDCEmbedded starts an embedded server authenticating through the
// in-process callout: OIDC tokens of iss, and the test tokens alongside.
func startOIDCEmbedded(t testing.TB, iss *oidctest.Issuer, mod ...func(*EmbeddedConfig)) (*Embedded, *gatewayproc.LogBuffer) {
	t.Helper()
	logs := &gatewayproc.LogBuffer{}
	cfg := EmbeddedConfig{Listen: "127.0.0.1:0", Tokens: testTokens(), OIDC: newTestVerifier(t, iss), Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	for _, f := range mod {
		f(&cfg)
	}
	e, err := StartEmbedded(cfg)
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	t.Cleanup(func() { _ = e.Shutdown(context.Background()) })
	return e, logs
}

// userInfo asks the server who nc is ($SYS.REQ.USER.INFO).
func userInfo(t testing.TB, nc *nats.Conn) (account, user string, expires time.Duration) {
	t.Helper()
	m, err := nc.Request("$SYS.REQ.USER.INFO", nil, 2*time.Second)
	if err != nil {
		t.Fatalf("user info: %v", err)
	}
	var r struct {
		Data struct {
			Account string        `json:"account"`
			User    string        `json:"user"`
			Expires time.Duration `json:"expires"`
		} `json:"data"`
	}
	if err := json.Unmarshal(m.Data, &r); err != nil {
		t.Fatal(err)
	}
	return r.Data.Account, r.Data.User, r.Data.Expires
}

func TestCalloutGivesOIDCTokensTheirClaimsPermissionsOnEveryTransport(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	e, _ := startOIDCEmbedded(t, iss)
	claims := iss.Claims("alice", testAudience, time.Hour)
	claims["nats"] = ordersPerms
	tok := iss.Sign(t, "ec-1", claims)
	admin := native(t, e, adminToken)
	sub, _ := admin.SubscribeSync("orders.>")
	admin.Flush()

	for name, cfg := range map[string]Config{"in-process": {Server: e}, "tcp": {URL: e.ClientURL()}} {
		t.Run(name, func(t *testing.T) {
			p := newTestPool(t, cfg)
			c := mustAcquire(t, p, tok)
			if err := c.Publish(context.Background(), &Msg{Subject: "orders.new", Data: []byte(name)}, 0); err != nil {
				t.Fatalf("allowed publish: %v", err)
			}
			if m, err := sub.NextMsg(2 * time.Second); err != nil || string(m.Data) != name {
				t.Fatalf("admin did not get the message: %v", err)
			}
			for _, subj := range []string{"billing.x", "orders.secret"} {
				if err := c.Publish(context.Background(), &Msg{Subject: subj}, 0); !errors.Is(err, ErrForbidden) {
					t.Fatalf("publish to %s: %v, want ErrForbidden", subj, err)
				}
			}
			if name == "in-process" {
				if got := c.Name(); got != "oidc:alice" {
					t.Fatalf("Name() = %q", got)
				}
				exp, ok := c.Expires()
				if want := time.Unix(claims["exp"].(int64), 0); !ok || !exp.Equal(want) {
					t.Fatalf("Expires() = %v %v, want %v", exp, ok, want)
				}
			} else if _, ok := c.Expires(); ok {
				t.Fatal("Expires() known over an external URL")
			}
		})
	}

	// A native client presenting the same JWT as its token gets the same
	// rules, from the same server, as a user of the global account whose
	// expiry is the token's.
	errs := make(chan error, 4)
	nc, err := nats.Connect(e.ClientURL(), nats.Token(tok),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
	if err != nil {
		t.Fatalf("native connect with the JWT: %v", err)
	}
	defer nc.Close()
	nc.Publish("billing.x", nil)
	nc.Flush()
	select {
	case err := <-errs:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatalf("native publish error: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("native client with the JWT published to billing.x without a violation")
	}
	if err := nc.Publish("orders.native", nil); err != nil || nc.Flush() != nil {
		t.Fatal("native allowed publish failed")
	}
	if _, err := sub.NextMsg(2 * time.Second); err != nil {
		t.Fatalf("admin did not get the native message: %v", err)
	}
	// Static tokens go through the callout too, with their own rules.
	acc, user, exp := userInfo(t, admin)
	if acc != "$G" || user != "admin" || exp != 0 {
		t.Fatalf("static admin token: account %q user %q expires %v", acc, user, exp)
	}
	if got := e.CalloutStats(); got.Accepted < 4 || got.Rejected != 0 {
		t.Fatalf("callout stats %+v", got)
	}
}

func TestCalloutTokenWithoutClaimGetsDefaultPermissions(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	// Default: none.
	e, _ := startOIDCEmbedded(t, iss)
	p := newTestPool(t, Config{Server: e})
	c := mustAcquire(t, p, iss.Sign(t, "rsa-1", iss.Claims("bob", testAudience, time.Hour)))
	for _, subj := range []string{"orders.x", "public.x"} {
		if err := c.Publish(context.Background(), &Msg{Subject: subj}, 0); !errors.Is(err, ErrForbidden) {
			t.Fatalf("no claim, no default: publish to %s: %v, want ErrForbidden", subj, err)
		}
	}
	// A configured default.
	e2, _ := startOIDCEmbedded(t, iss, func(c *EmbeddedConfig) {
		c.OIDC = newTestVerifier(t, iss, func(o *OIDCConfig) {
			o.DefaultPermissions = &Permissions{Publish: &SubjectPermission{Allow: []string{"public.>"}}}
		})
	})
	p2 := newTestPool(t, Config{Server: e2})
	c2 := mustAcquire(t, p2, iss.Sign(t, "rsa-1", iss.Claims("bob", testAudience, time.Hour)))
	if err := c2.Publish(context.Background(), &Msg{Subject: "public.x"}, 0); err != nil {
		t.Fatalf("default allows public.x: %v", err)
	}
	if err := c2.Publish(context.Background(), &Msg{Subject: "orders.x"}, 0); !errors.Is(err, ErrForbidden) {
		t.Fatalf("default denies orders.x: %v", err)
	}
}

func TestCalloutRejectionIsFastUnauthorizedAndRemembered(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	e, logs := startOIDCEmbedded(t, iss)
	p := newTestPool(t, Config{Server: e})
	bad := iss.Sign(t, "rsa-1", withPerms(iss.Claims("mallory", testAudience, time.Hour), map[string]any{"publish": "everything"}))
	start := time.Now()
	_, err := p.Acquire(context.Background(), bad)
	if !errors.Is(err, ErrUnauthorized) || time.Since(start) > time.Second {
		t.Fatalf("bad permissions claim: %v after %v, want ErrUnauthorized at once", err, time.Since(start))
	}
	if _, err := p.Acquire(context.Background(), bad); !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "remembered") {
		t.Fatalf("second attempt: %v, want a remembered rejection", err)
	}
	if got := e.CalloutStats().Rejected; got != 1 {
		t.Fatalf("callout saw %d rejections, want 1 (the second was remembered)", got)
	}
	if !strings.Contains(logs.String(), "permissions claim is not of the tokens file's shape") || !strings.Contains(logs.String(), "sub=mallory") {
		t.Fatalf("no operator log line for the bad claim:\n%s", logs)
	}
	if strings.Contains(logs.String(), bad[len(bad)-20:]) {
		t.Fatal("the token is in the log")
	}
}

// TestCalloutUserExpiresWithTheToken: NATS itself disconnects the
// connection at the token's exp, and will not take the token again; the
// pool's connection closes as unauthorized. Until it has, operations on
// it are ErrUnauthorized, not ErrUnavailable.
func TestCalloutUserExpiresWithTheToken(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	e, _ := startOIDCEmbedded(t, iss)
	p := newTestPool(t, Config{Server: e}) // nats.go retries after 500 ms
	claims := iss.Claims("eve", testAudience, 2*time.Second)
	claims["nats"] = ordersPerms
	tok := iss.Sign(t, "rsa-1", claims)
	c := mustAcquire(t, p, tok)
	if exp, ok := c.Expires(); !ok || time.Until(exp) > 2*time.Second {
		t.Fatalf("Expires() = %v %v", exp, ok)
	}
	deadline := time.After(8 * time.Second)
	refused := 0
	for done := false; !done; {
		select {
		case <-c.Done():
			done = true
		case <-deadline:
			t.Fatal("the connection outlived its token by 6 s")
		case <-time.After(10 * time.Millisecond):
			err := c.Publish(context.Background(), &Msg{Subject: "orders.x"}, 0)
			switch {
			case err == nil:
			case errors.Is(err, ErrUnauthorized):
				refused++
			case errors.Is(err, ErrUnavailable) && c.nc.IsClosed():
			default:
				t.Fatalf("publish between expiry and close: %v, want ErrUnauthorized", err)
			}
		}
	}
	if refused == 0 {
		t.Fatal("no publish landed between the expiry and the close: the test saw nothing")
	}
	if !c.ClosedByAuth() {
		t.Fatalf("closed, but not by auth: %v", c.nc.LastError())
	}
	if _, err := p.Acquire(context.Background(), tok); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("expired token: %v, want ErrUnauthorized", err)
	}
}

func TestCalloutLargeTokenWorksEndToEnd(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	e, _ := startOIDCEmbedded(t, iss)
	claims := iss.Claims("big", testAudience, time.Hour)
	claims["nats"] = ordersPerms
	claims["groups"] = strings.Repeat("g", 6<<10)
	tok := iss.Sign(t, "rsa-1", claims)
	if len(tok) < 6<<10 {
		t.Fatalf("token of %d bytes", len(tok))
	}
	for name, cfg := range map[string]Config{"in-process": {Server: e}, "tcp": {URL: e.ClientURL()}} {
		p := newTestPool(t, cfg)
		c := mustAcquire(t, p, tok)
		if err := c.Publish(context.Background(), &Msg{Subject: "orders.big"}, 0); err != nil {
			t.Fatalf("%s: publish with a %d-byte token: %v", name, len(tok), err)
		}
	}
}
