package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/natsgate/natsgate/bridge"
)

// tokenSource says where the gateway's tokens come from, for the banner
// and the log: how many and from where, never the tokens themselves
// (except a generated one, shown once on stdout).
type tokenSource struct {
	count     int
	from      string
	generated string
}

func describeTokens(cfg *config, e *bridge.Embedded, count int, generated string) tokenSource {
	switch {
	case e == nil:
		return tokenSource{from: "the NATS servers at --nats-url decide which tokens work"}
	case cfg.oidc.issuer != "":
		from := "OIDC access tokens of " + cfg.oidc.issuer + " for audience " + cfg.oidc.audience
		if count > 0 {
			from += fmt.Sprintf(", and %d static token(s)", count)
		}
		return tokenSource{from: from}
	case generated != "":
		return tokenSource{count: 1, from: "generated", generated: generated}
	case cfg.tokensFile != "":
		return tokenSource{count: count, from: cfg.tokensFile}
	case cfg.token != "":
		return tokenSource{count: 1, from: "--token"}
	}
	return tokenSource{from: "the --nats-config file's own authorization"}
}

// banner is what a newcomer reads first on stdout: where everything is,
// the token to paste, commands to try.
type banner struct {
	base     string
	embedded *bridge.Embedded
	natsURL  string
	tokens   tokenSource
	reloads  bool // SIGHUP does something
}

func printBanner(w io.Writer, b banner) {
	var sb strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&sb, format, args...) }
	p("\n%s is up (pid %d)\n", readVersion(), os.Getpid())
	p("    API:          %s\n", b.base)
	p("    console:      %s/\n", b.base)
	switch {
	case b.embedded == nil:
		p("    NATS:         %s (external)\n", b.natsURL)
	case b.embedded.ClientURL() != "":
		p("    native NATS:  %s (the embedded nats-server; same tokens)\n", b.embedded.ClientURL())
	default:
		p("    native NATS:  off (--nats-listen off: the embedded server serves only the gateway)\n")
	}
	if b.reloads {
		p("    reload:       kill -HUP %d (this process: with go run, signal this pid, not go run's)\n", os.Getpid())
	}
	p("\n")
	t := b.tokens
	switch {
	case t.generated != "":
		p("No --token given, so this run uses a generated token (shown once, never logged). Paste it:\n\n")
		p("    export TOKEN=%s\n\n", t.generated)
	case t.count == 1:
		p("1 token loaded (%s). Paste yours:\n\n    export TOKEN=…\n\n", t.from)
	case t.count > 1:
		p("%d tokens loaded (%s). Paste one of them:\n\n    export TOKEN=…\n\n", t.count, t.from)
	default:
		p("Tokens: %s. Paste one:\n\n    export TOKEN=…\n\n", t.from)
	}
	p("Try it (in a second terminal, after the export):\n")
	p("    curl -N -H \"Authorization: Bearer $TOKEN\" '%s/v1/subscribe/demo.>'\n", b.base)
	p("    curl -i -H \"Authorization: Bearer $TOKEN\" -d 'hello' %s/v1/publish/demo.greeting\n\n", b.base)
	_, _ = io.WriteString(w, sb.String())
}
