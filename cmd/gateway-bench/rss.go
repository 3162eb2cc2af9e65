package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/natsgate/natsgate/internal/gatewayproc"
)

// rssWarm is how many sessions open before the first RSS reading (one is
// kept open): the code paths, the token's NATS connection, the channel.
const rssWarm = 64

// rssGauges are the gateway's /metrics gauges that explain its RSS.
var rssGauges = []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes", "go_memstats_heap_idle_bytes", "go_memstats_heap_released_bytes"}

// rssRun is one side of an RSS row.
type rssRun struct {
	n             int
	before, after int64 // KiB
	gb, ga        map[string]float64
	opened        time.Duration
	conc          int
}

func (m *rssRun) perSession() float64 { return float64(m.after-m.before) / float64(m.n) }

// String renders the growth, with the Go gauges when the server is a
// gateway.
func (m *rssRun) String() string {
	s := fmt.Sprintf("**%.2f KiB**/session: RSS %s → %s KiB", m.perSession(), fmtInt(float64(m.before)), fmtInt(float64(m.after)))
	if len(m.ga) == len(rssGauges) && len(m.gb) == len(rssGauges) {
		kib := func(name string) float64 { return (m.ga[name] - m.gb[name]) / 1024 / float64(m.n) }
		retained := func(g map[string]float64) float64 {
			return g["go_memstats_heap_idle_bytes"] - g["go_memstats_heap_released_bytes"]
		}
		s += fmt.Sprintf(" (Go heap in use %+.1f KiB, free heap not yet returned to the OS %+.1f KiB, stacks %+.1f KiB, goroutines %+.2f per session)",
			kib("go_memstats_heap_inuse_bytes"), (retained(m.ga)-retained(m.gb))/1024/float64(m.n),
			kib("go_memstats_stack_inuse_bytes"), (m.ga["go_goroutines"]-m.gb["go_goroutines"])/float64(m.n))
	}
	return s + fmt.Sprintf("; opened in %s, %.0f/s, %d at a time", m.opened.Round(time.Millisecond), float64(m.n)/m.opened.Seconds(), m.conc)
}

// measureRSS reads p's RSS growth over n idle sessions. open(ctx, i)
// opens session i (i in [0, n+rssWarm); the warm-up ones are n…) and
// returns what closes it. The warm-up sessions open first and all but one
// close; then the first reading, the n sessions (b.o.dialConc at a time),
// b.o.settle, the second reading. Every session is closed on return. g,
// when not nil, is p as a gateway, for its gauges.
func (b *bench) measureRSS(ctx context.Context, p *proc, g *gateway, n int, open func(ctx context.Context, i int) (func(), error)) (*rssRun, error) {
	closers := make([]func(), n+rssWarm)
	defer func() {
		for _, c := range closers {
			if c != nil {
				c()
			}
		}
	}()
	for i := n; i < n+rssWarm; i++ {
		c, err := open(ctx, i)
		if err != nil {
			return nil, fmt.Errorf("warm-up session: %w", err)
		}
		closers[i] = c
		if i > n {
			c()
			closers[i] = nil
		}
	}
	time.Sleep(time.Second)
	m := &rssRun{n: n, conc: b.o.dialConc}
	var err error
	if m.before, err = p.rssKiB(); err != nil {
		return nil, err
	}
	if g != nil {
		m.gb = g.metrics(rssGauges...)
	}
	t := time.Now()
	err = parallel(ctx, n, b.o.dialConc, func(ctx context.Context, i int) error {
		c, err := open(ctx, i)
		closers[i] = c
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("opening %d sessions: %w", n, err)
	}
	m.opened = time.Since(t)
	logf("%s %q: %d sessions open in %s (%.0f/s); settling %s", p.kind, p.name, n, m.opened.Round(time.Millisecond), float64(n)/m.opened.Seconds(), b.o.settle)
	time.Sleep(b.o.settle)
	if m.after, err = p.rssKiB(); err != nil {
		return nil, err
	}
	if g != nil {
		m.ga = g.metrics(rssGauges...)
	}
	logf("%s %q: RSS before %d KiB, after %d KiB, %.2f KiB/session; gauges before %v after %v", p.kind, p.name, m.before, m.after, m.perSession(), m.gb, m.ga)
	return m, nil
}

// rowRSS: gateway RSS growth per idle authenticated session.
func (b *bench) rowRSS(ctx context.Context, r *row) error {
	// Pings every 15 s by default would need a reader on each client;
	// with 10 m none is sent during the row.
	g, err := b.startGateway(ctx, "rss", "--keepalive", "10m")
	if err != nil {
		return err
	}
	defer g.stop()
	m, err := b.measureRSS(ctx, &g.proc, g, b.o.sessions, func(ctx context.Context, _ int) (func(), error) {
		c, err := dialSession(ctx, g)
		if err != nil {
			return nil, err
		}
		return func() { c.CloseNow() }, nil
	})
	if err != nil {
		return err
	}
	r.gateway = m.String()
	r.baseline = "—"
	r.result = fmt.Sprintf("**%.2f KiB**", m.perSession())
	r.goal = "≤ 12 KiB"
	r.met = verdict(m.perSession() <= 12)
	return nil
}

// rowRSSShared: idle sessions subscribed to one subject (channel), all
// with one token (one JWT for one user), gateway ÷ Centrifugo.
func (b *bench) rowRSSShared(ctx context.Context, r *row) error {
	gm, err := b.rssGateway(ctx, "rsssub", false)
	if err != nil {
		return err
	}
	cm, err := b.rssCentrifugo(ctx, "rsssub", false)
	if err != nil {
		return err
	}
	ratio := gm.perSession() / cm.perSession()
	r.gateway = gm.String()
	r.baseline = "Centrifugo, one JWT for all, subscribed to one channel: " + cm.String()
	r.result = fmt.Sprintf("**%.2f KiB** (**%.2f×** Centrifugo's %.2f KiB)", gm.perSession(), ratio, cm.perSession())
	r.goal = "≤ 10 KiB and ≤ 0.25× Centrifugo"
	r.met = verdict(gm.perSession() <= 10 && ratio <= 0.25)
	return nil
}

// rowRSSUser: idle subscribed sessions, each with a token of its own
// (tokens file; Centrifugo: a JWT per user), gateway ÷ Centrifugo. The
// Centrifugo side runs first here, the gateway first in rsssub.
func (b *bench) rowRSSUser(ctx context.Context, r *row) error {
	cm, err := b.rssCentrifugo(ctx, "rssuser", true)
	if err != nil {
		return err
	}
	gm, err := b.rssGateway(ctx, "rssuser", true)
	if err != nil {
		return err
	}
	ratio := gm.perSession() / cm.perSession()
	r.gateway = gm.String()
	r.baseline = "Centrifugo, a JWT per user, subscribed to one channel: " + cm.String()
	r.result = fmt.Sprintf("**%.2f×** Centrifugo (%.2f KiB vs %.2f KiB)", ratio, gm.perSession(), cm.perSession())
	r.goal = "≤ 1.0× Centrifugo"
	r.met = verdict(ratio <= 1.0)
	return nil
}

// rssGateway measures idle sessions subscribed to bench.idle on a gateway
// of its own, with one token for all or (perToken) a token each from a
// tokens file (the default --max-tokens, 20,000, holds them; the
// failed-authentication limit spreads out the 64 new tokens in flight
// from one address, as it would many users behind one NAT).
func (b *bench) rssGateway(ctx context.Context, name string, perToken bool) (*rssRun, error) {
	n := b.o.sessions
	extra := []string{"--keepalive", "10m"} // see rowRSS
	var tokens []string
	if perToken {
		tokens = make([]string, n+rssWarm)
		var f struct {
			Tokens []map[string]string `json:"tokens"`
		}
		for i := range tokens {
			tokens[i] = gatewayproc.Token()
			f.Tokens = append(f.Tokens, map[string]string{"name": "u" + strconv.Itoa(i), "token": tokens[i]})
		}
		data, err := json.Marshal(f)
		if err != nil {
			return nil, err
		}
		path := filepath.Join(b.tmp, name+"-tokens.json")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, err
		}
		extra = append(extra, "--tokens-file", path)
	}
	g, err := b.startGateway(ctx, name, extra...)
	if err != nil {
		return nil, err
	}
	defer g.stop()
	return b.measureRSS(ctx, &g.proc, g, n, func(ctx context.Context, i int) (func(), error) {
		token := g.token
		if perToken {
			token = tokens[i]
		}
		c, err := dialSessionAs(ctx, g.addr, token)
		if err != nil {
			return nil, err
		}
		if err := subscribe(ctx, c, "i", "bench.idle"); err != nil {
			c.CloseNow()
			return nil, err
		}
		return func() { c.CloseNow() }, nil
	})
}

// rssCentrifugo measures idle clients subscribed to the bench channel on
// a Centrifugo of its own, with one JWT for all or (perUser) one each;
// each client answers the server's pings.
func (b *bench) rssCentrifugo(ctx context.Context, name string, perUser bool) (*rssRun, error) {
	cf, err := b.startCentrifugo(ctx, b.tmp, name)
	if err != nil {
		return nil, err
	}
	defer cf.stop()
	shared := cf.jwt("bench")
	var pubs, other atomic.Int64
	m, err := b.measureRSS(ctx, &cf.proc, nil, b.o.sessions, func(ctx context.Context, i int) (func(), error) {
		token := shared
		if perUser {
			token = cf.jwt("u" + strconv.Itoa(i))
		}
		c, err := dialCentrifugo(ctx, cf.addr, token, centrifugoChannel, &pubs, &other, nil)
		if err != nil {
			return nil, err
		}
		return func() { c.c.CloseNow() }, nil
	})
	if n := other.Load(); err == nil && n > 0 {
		return nil, fmt.Errorf("centrifugo %q: %d unexpected pushes (disconnects?) during the row: not all clients stayed", name, n)
	}
	return m, err
}
