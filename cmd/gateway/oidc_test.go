package main

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsgate/natsgate/internal/gatewayproc"
	"github.com/natsgate/natsgate/internal/oidctest"
)

func TestRunWithOIDCIssuer(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	tokens := filepath.Join(t.TempDir(), "tokens.json")
	os.WriteFile(tokens, []byte(`{"tokens":[{"name":"ops","token":"ops-Tok3n-alongside-OIDC"}]}`), 0o600)
	s := start(t, map[string]string{"GATEWAY_OIDC_AUDIENCE": testAudience},
		"--oidc-issuer", iss.URL, "--tokens-file", tokens,
		"--oidc-default-permissions", `{"publish":{"allow":["public.>"]}}`)
	if !strings.Contains(s.stdout.String(), "OIDC access tokens of "+iss.URL) || strings.Contains(s.stdout.String(), "generated token") {
		t.Fatalf("the banner does not say which tokens work:\n%s", s.stdout)
	}
	for _, tc := range []struct {
		name, token, path string
		want              int
	}{
		{"claim allows", ordersToken(t, iss, "alice"), "/v1/publish/orders.x", 204},
		{"claim denies", ordersToken(t, iss, "alice"), "/v1/publish/public.x", 403},
		{"default allows", iss.Sign(t, "ec-1", iss.Claims("bob", testAudience, time.Hour)), "/v1/publish/public.x", 204},
		{"default denies", iss.Sign(t, "ec-1", iss.Claims("bob", testAudience, time.Hour)), "/v1/publish/orders.x", 403},
		{"static token alongside", "ops-Tok3n-alongside-OIDC", "/v1/publish/anything", 204},
		{"wrong audience", iss.Sign(t, "rsa-1", iss.Claims("eve", "other", time.Hour)), "/v1/publish/orders.x", 401},
	} {
		if got := post(t, s.base+tc.path, tc.token, "x"); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}

	// A 6 KiB token end to end, over HTTP and from a native client on the
	// embedded listener; a 64 KiB one is a quick 401.
	big := iss.Claims("big", testAudience, time.Hour)
	big["nats"] = ordersClaim
	bigTok := iss.SignSized(t, "rsa-1", big, 6<<10)
	if got := post(t, s.base+"/v1/publish/orders.big", bigTok, "x"); got != 204 {
		t.Fatalf("%d-byte token: %d, want 204", len(bigTok), got)
	}
	nc, err := nats.Connect(s.natsURL, nats.Token(bigTok))
	if err != nil {
		t.Fatalf("native client with a %d-byte token: %v", len(bigTok), err)
	}
	if err := nc.Publish("orders.native", nil); err != nil || nc.Flush() != nil {
		t.Fatal("native publish with the big token failed")
	}
	nc.Close()
	start := time.Now()
	if got := post(t, s.base+"/v1/publish/orders.huge", iss.SignSized(t, "rsa-1", iss.Claims("huge", testAudience, time.Hour), 64<<10), "x"); got != 401 {
		t.Fatalf("64 KiB token: %d, want 401", got)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("64 KiB token: 401 after %v", d)
	}
	for _, secret := range []string{"ops-Tok3n", bigTok[len(bigTok)-40:], "eyJ"} {
		if strings.Contains(s.stderr.String(), secret) {
			t.Fatalf("token text %q in the log:\n%s", secret, s.stderr)
		}
	}
}

func TestOIDCFlagsAreChecked(t *testing.T) {
	t.Parallel()
	iss := oidctest.New(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--oidc-issuer", iss.URL}, "--oidc-audience"},
		{[]string{"--oidc-audience", "x"}, "without --oidc-issuer"},
		{[]string{"--oidc-issuer", iss.URL, "--oidc-audience", "x", "--nats-url", "nats://127.0.0.1:1"}, "gateway callout"},
		{[]string{"--oidc-issuer", iss.URL, "--oidc-audience", "x", "--oidc-default-permissions", `{"publish":"all"}`}, "--oidc-default-permissions"},
		{[]string{"--oidc-issuer", iss.URL + "/nowhere", "--oidc-audience", "x"}, "oidc discovery"},
		{[]string{"callout", "--nats-url", "nats://127.0.0.1:1"}, "issuer seed is required"},
		{[]string{"callout", "--nats-url", "nats://127.0.0.1:1", "--issuer-seed", "SAnotaseed"}, "does not parse"},
		{[]string{"callout", "--issuer-seed", "x"}, "--nats-url is required"},
	} {
		args := append(tc.args, "--listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0")
		if tc.args[0] == "callout" {
			args = tc.args
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := run(ctx, args, func(string) string { return "" }, &gatewayproc.LogBuffer{}, &gatewayproc.LogBuffer{})
		cancel()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error about %s", tc.args, err, tc.want)
		}
	}
	var help gatewayproc.LogBuffer
	if err := run(context.Background(), []string{"--help"}, func(string) string { return "" }, &help, &help); err != nil && !errors.Is(err, http.ErrServerClosed) {
		t.Fatal(err)
	}
	for _, want := range []string{"GATEWAY_OIDC_ISSUER", "GATEWAY_OIDC_AUDIENCE", "GATEWAY_OIDC_PERMISSIONS_CLAIM", "GATEWAY_OIDC_DEFAULT_PERMISSIONS", "natsgate callout --help"} {
		if !strings.Contains(help.String(), want) {
			t.Errorf("--help lacks %s", want)
		}
	}
}
