package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"

	"github.com/natsgate/natsgate/bridge"
)

// oidcFlags are the OIDC flags, shared by the gateway and `gateway callout`.
type oidcFlags struct {
	issuer             string
	audience           string
	permissionsClaim   string
	defaultPermissions string
}

func addOIDCFlags(fs *flag.FlagSet, o *oidcFlags) {
	fs.StringVar(&o.issuer, "oidc-issuer", "", "accept OIDC access tokens (JWTs) of this issuer, e.g. https://idp.example.com/realms/x, verified by an auth callout service inside the gateway; static tokens (--token, --tokens-file) keep working alongside")
	fs.StringVar(&o.audience, "oidc-audience", "", "the aud value tokens must carry (required with --oidc-issuer)")
	fs.StringVar(&o.permissionsClaim, "oidc-permissions-claim", "nats", `claim holding a token's NATS permissions, as the tokens file has them: {"publish":{"allow":[…],"deny":[…]},"subscribe":{…}}`)
	fs.StringVar(&o.defaultPermissions, "oidc-default-permissions", "none", `permissions of a token without that claim: "none" (it may neither publish nor subscribe) or JSON of the same shape ({} allows everything)`)
}

// verifier checks the OIDC flags and discovers the issuer; nil without
// --oidc-issuer.
func (o *oidcFlags) verifier(ctx context.Context, set map[string]bool) (*bridge.OIDCVerifier, error) {
	if o.issuer == "" {
		for _, f := range []string{"oidc-audience", "oidc-permissions-claim", "oidc-default-permissions"} {
			if set[f] {
				return nil, fmt.Errorf("--%s without --oidc-issuer", f)
			}
		}
		return nil, nil
	}
	if o.audience == "" {
		return nil, errors.New("--oidc-issuer needs --oidc-audience: the aud value your identity provider puts in the tokens meant for this gateway")
	}
	if o.permissionsClaim == "" {
		return nil, errors.New("--oidc-permissions-claim is empty")
	}
	var def *bridge.Permissions
	if v := strings.TrimSpace(o.defaultPermissions); v != "none" && v != "" {
		var err error
		if def, err = bridge.ParsePermissions([]byte(v)); err != nil {
			return nil, fmt.Errorf("--oidc-default-permissions: %w", err)
		}
	}
	return bridge.NewOIDCVerifier(ctx, bridge.OIDCConfig{
		Issuer:             o.issuer,
		Audience:           o.audience,
		PermissionsClaim:   o.permissionsClaim,
		DefaultPermissions: def,
	})
}

// checkOIDCFlags refuses --oidc-issuer where the gateway cannot act on
// it: external servers authenticate by their own configuration.
func checkOIDCFlags(cfg *config) error {
	switch {
	case cfg.oidc.issuer == "":
		return nil
	case cfg.natsURL != "":
		return errors.New("--oidc-issuer configures the embedded server; for NATS servers of your own, configure auth_callout in them and run `gateway callout` beside them (see the README)")
	case cfg.natsConfig != "":
		has, err := bridge.ConfigHasAuth(cfg.natsConfig)
		if err != nil {
			return fmt.Errorf("nats config: %w", err)
		}
		if has {
			return errors.New("--oidc-issuer replaces the embedded server's authorization: remove it from the --nats-config file (or use --tokens-file for static tokens alongside)")
		}
	}
	return nil
}
