package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/natsgate/natsgate/internal/gatewayproc"
	"github.com/natsgate/natsgate/internal/oidctest"
)

const testAudience = "natsgate-test"

// ordersClaim is a permissions claim: orders.> only (and replies).
var ordersClaim = map[string]any{
	"publish":   map[string]any{"allow": []string{"orders.>"}},
	"subscribe": map[string]any{"allow": []string{"orders.>", "_INBOX.>"}},
}

func ordersToken(t *testing.T, iss *oidctest.Issuer, sub string) string {
	t.Helper()
	c := iss.Claims(sub, testAudience, time.Hour)
	c["nats"] = ordersClaim
	return iss.Sign(t, "rsa-1", c)
}

// calloutServerConf is the nats-server configuration the README shows for
// `gateway callout`, with the keys of the test filled in.
const calloutServerConf = `
listen: "127.0.0.1:-1"
max_control_line: 32KB
accounts {
  AUTH: { users: [ { user: callout, password: "%s" } ] }
  APP: {}
}
authorization {
  timeout: 3s
  auth_callout {
    issuer: %s
    auth_users: [ callout ]
    account: AUTH
    %s
  }
}
`

// startCalloutServer runs a real nats-server from calloutServerConf.
func startCalloutServer(t *testing.T, issuerPub, password, xkeyPub string) *server.Server {
	t.Helper()
	extra := ""
	if xkeyPub != "" {
		extra = "xkey: " + xkeyPub
	}
	conf := filepath.Join(t.TempDir(), "server.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, calloutServerConf, password, issuerPub, extra), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	opts.NoSigs, opts.NoLog = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(s.Shutdown)
	return s
}

// callout is a `gateway callout` run by run() in the test process.
type callout struct {
	logs   *gatewayproc.LogBuffer
	cancel context.CancelFunc
	done   chan error
}

func startCallout(t *testing.T, env map[string]string, args ...string) *callout {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &callout{logs: &gatewayproc.LogBuffer{}, cancel: cancel, done: make(chan error, 1)}
	go func() {
		c.done <- run(ctx, append([]string{"callout", "--log-level", "debug"}, args...),
			func(k string) string { return env[k] }, &gatewayproc.LogBuffer{}, c.logs)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(c.logs.String(), "natsgate callout serving") {
		select {
		case err := <-c.done:
			t.Fatalf("callout returned early: %v\n%s", err, c.logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("callout did not start:\n%s", c.logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Cleanup(func() { c.stop(t) })
	return c
}

func (c *callout) stop(t *testing.T) {
	c.cancel()
	select {
	case err := <-c.done:
		if err != nil {
			t.Errorf("callout: %v", err)
		}
		c.done <- nil
	case <-time.After(10 * time.Second):
		t.Error("callout did not stop within 10 s")
	}
}

func (c *callout) accepted() int { return strings.Count(c.logs.String(), "callout: token accepted") }

func accountOf(t *testing.T, nc *nats.Conn) string {
	t.Helper()
	m, err := nc.Request("$SYS.REQ.USER.INFO", nil, 2*time.Second)
	if err != nil {
		t.Fatalf("user info: %v", err)
	}
	var r struct {
		Data struct {
			Account string `json:"account"`
		} `json:"data"`
	}
	_ = json.Unmarshal(m.Data, &r)
	return r.Data.Account
}

// TestCalloutCommandInstancesShareTheLoad runs two `gateway callout`
// instances against a nats-server configured as the README says, and
// shows both answer, that users land in --user-account with their
// claim's permissions, that static tokens work alongside, and that a
// gateway with --nats-url answers 401 for a token the callout refuses.
func TestCalloutCommandInstancesShareTheLoad(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	akp, _ := nkeys.CreateAccount()
	seed, _ := akp.Seed()
	pub, _ := akp.PublicKey()
	s := startCalloutServer(t, pub, "callout-pw", "")
	dir := t.TempDir()
	seedFile := filepath.Join(dir, "issuer.nk")
	os.WriteFile(seedFile, append(seed, '\n'), 0o600)
	tokensFile := filepath.Join(dir, "tokens.json")
	os.WriteFile(tokensFile, []byte(`{"tokens":[{"name":"svc","token":"static-Tok3n-for-the-callout","publish":{"allow":["svc.>"]}}]}`), 0o600)

	args := []string{"--nats-url", s.ClientURL(), "--nats-user", "callout", "--user-account", "APP",
		"--oidc-issuer", iss.URL, "--oidc-audience", testAudience, "--tokens-file", tokensFile}
	a := startCallout(t, map[string]string{"GATEWAY_NATS_PASSWORD": "callout-pw", "GATEWAY_ISSUER_SEED": string(seed)}, args...)
	b := startCallout(t, map[string]string{"GATEWAY_NATS_PASSWORD": "callout-pw"}, append(args, "--issuer-nkey-file", seedFile)...)

	for i := range 24 {
		errs := make(chan error, 1)
		nc, err := nats.Connect(s.ClientURL(), nats.Token(ordersToken(t, iss, fmt.Sprint("user-", i))),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
		if err != nil {
			t.Fatalf("connect %d with an OIDC token: %v", i, err)
		}
		if i == 0 {
			nc.Publish("billing.x", nil)
			nc.Flush()
			select {
			case err := <-errs:
				if !errors.Is(err, nats.ErrPermissionViolation) {
					t.Fatalf("publish outside the claim: %v", err)
				}
			case <-time.After(2 * time.Second):
				t.Fatal("publish outside the claim was not refused")
			}
		}
		nc.Close()
	}
	if a.accepted() == 0 || b.accepted() == 0 {
		t.Fatalf("one instance answered everything: %d and %d accepted", a.accepted(), b.accepted())
	}
	t.Logf("instances accepted %d and %d of 24", a.accepted(), b.accepted())

	all := iss.Claims("admin", testAudience, time.Hour)
	all["nats"] = map[string]any{}
	nc, err := nats.Connect(s.ClientURL(), nats.Token(iss.Sign(t, "ec-1", all)))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	if acc := accountOf(t, nc); acc != "APP" {
		t.Fatalf("user in account %q, want APP", acc)
	}
	nc.Close()
	nc, err = nats.Connect(s.ClientURL(), nats.Token("static-Tok3n-for-the-callout"))
	if err != nil {
		t.Fatalf("static token: %v", err)
	}
	nc.Close()
	for _, bad := range []string{"wrong-static-token", iss.Sign(t, "rsa-1", iss.Claims("x", "other-aud", time.Hour))} {
		if _, err := nats.Connect(s.ClientURL(), nats.Token(bad)); !errors.Is(err, nats.ErrAuthorization) {
			t.Fatalf("bad token: %v, want an authorization error", err)
		}
	}

	// The gateway in front of that server: NATS decides, through the callout.
	g := start(t, nil, "--nats-url", s.ClientURL())
	if got := post(t, g.base+"/v1/publish/orders.x", ordersToken(t, iss, "via-gateway"), "x"); got != http.StatusNoContent {
		t.Fatalf("gateway publish with an OIDC token: %d", got)
	}
	if got := post(t, g.base+"/v1/publish/billing.x", ordersToken(t, iss, "via-gateway"), "x"); got != http.StatusForbidden {
		t.Fatalf("gateway publish outside the claim: %d, want 403", got)
	}
	start := time.Now()
	if got := post(t, g.base+"/v1/publish/orders.x", iss.Sign(t, "rsa-1", iss.Claims("x", "other-aud", time.Hour)), "x"); got != http.StatusUnauthorized {
		t.Fatalf("gateway publish with a wrong-audience token: %d, want 401", got)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("401 took %v", d)
	}
	for _, c := range []*callout{a, b} {
		if strings.Contains(c.logs.String(), "static-Tok3n") || strings.Contains(c.logs.String(), "eyJ") {
			t.Fatalf("a token in the callout's log:\n%s", c.logs)
		}
	}
}

// TestCalloutCommandWithXKey: with auth_callout { xkey } the requests,
// which carry the tokens, are encrypted; the service opens them and seals
// its answers.
func TestCalloutCommandWithXKey(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	akp, _ := nkeys.CreateAccount()
	seed, _ := akp.Seed()
	pub, _ := akp.PublicKey()
	xkp, _ := nkeys.CreateCurveKeys()
	xseed, _ := xkp.Seed()
	xpub, _ := xkp.PublicKey()
	s := startCalloutServer(t, pub, "pw", xpub)
	env := map[string]string{"GATEWAY_NATS_PASSWORD": "pw", "GATEWAY_ISSUER_SEED": string(seed), "GATEWAY_XKEY_SEED": string(xseed)}
	c := startCallout(t, env, "--nats-url", s.ClientURL(), "--nats-user", "callout", "--user-account", "APP",
		"--oidc-issuer", iss.URL, "--oidc-audience", testAudience)
	nc, err := nats.Connect(s.ClientURL(), nats.Token(ordersToken(t, iss, "x")))
	if err != nil {
		t.Fatalf("connect through an encrypted callout: %v\n%s", err, c.logs)
	}
	nc.Close()
	if c.accepted() != 1 {
		t.Fatalf("accepted %d", c.accepted())
	}
	// The requests really are sealed: a service without the xkey cannot
	// read them, and the client is refused when the server's wait ends.
	c.stop(t)
	delete(env, "GATEWAY_XKEY_SEED")
	plain := startCallout(t, env, "--nats-url", s.ClientURL(), "--nats-user", "callout", "--user-account", "APP",
		"--oidc-issuer", iss.URL, "--oidc-audience", testAudience)
	if _, err := nats.Connect(s.ClientURL(), nats.Token(ordersToken(t, iss, "y"))); err == nil {
		t.Fatal("a service without the xkey authorized a client")
	}
	if !strings.Contains(plain.logs.String(), "ignoring a malformed authorization request") {
		t.Fatalf("the service without the xkey read the request:\n%s", plain.logs)
	}
}
