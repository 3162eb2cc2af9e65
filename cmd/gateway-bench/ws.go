package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// wsHTTP dials WebSocket upgrades; never proxied, no connection limit.
var wsHTTP = &http.Client{Transport: &http.Transport{
	Proxy:       nil,
	DialContext: (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
}}

// dialSession opens an authenticated gateway session (Bearer header on the
// upgrade) and reads its connected frame. Nothing reads it afterwards
// unless the caller starts a reader.
func dialSession(ctx context.Context, g *gateway) (*websocket.Conn, error) {
	return dialSessionAs(ctx, g.addr, g.token)
}

// dialSessionAs is dialSession with another token.
func dialSessionAs(ctx context.Context, addr, token string) (*websocket.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws://"+addr+"/v1/ws", &websocket.DialOptions{
		HTTPClient:      wsHTTP,
		HTTPHeader:      http.Header{"Authorization": {"Bearer " + token}},
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		if resp != nil {
			err = fmt.Errorf("%w (HTTP %d)", err, resp.StatusCode)
		}
		return nil, err
	}
	_, data, err := c.Read(ctx)
	if err != nil {
		c.CloseNow()
		return nil, fmt.Errorf("waiting for connected: %w", err)
	}
	if !bytes.HasPrefix(data, []byte(`{"op":"connected"`)) {
		c.CloseNow()
		return nil, fmt.Errorf("first frame is not connected: %.200s", data)
	}
	return c, nil
}

// subscribe sends a sub frame and reads until its ok.
func subscribe(ctx context.Context, c *websocket.Conn, sid, subject string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	f := fmt.Appendf(nil, `{"op":"sub","sid":%q,"subject":%q}`, sid, subject)
	if err := c.Write(ctx, websocket.MessageText, f); err != nil {
		return err
	}
	for {
		_, data, err := c.Read(ctx)
		if err != nil {
			return fmt.Errorf("waiting for sub ok: %w", err)
		}
		if bytes.HasPrefix(data, []byte(`{"op":"ok"`)) {
			return nil
		}
		if bytes.HasPrefix(data, []byte(`{"op":"error"`)) {
			return fmt.Errorf("sub refused: %s", data)
		}
	}
}

// parallel runs f(i) for i in [0,n) with at most conc at once and returns
// the first error.
func parallel(ctx context.Context, n, conc int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next  atomic.Int64
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for w := 0; w < min(conc, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := f(ctx, i); err != nil {
					once.Do(func() { first = fmt.Errorf("#%d: %w", i, err); cancel() })
					return
				}
			}
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return first
}

// frameCounter reads a session's frames until it ends, counting msg
// frames and other frames, with one reused buffer.
func frameCounter(c *websocket.Conn, msgs, other *atomic.Int64) {
	buf := make([]byte, 2048)
	msgPrefix := []byte(`{"op":"msg"`)
	for {
		_, rd, err := c.Reader(context.Background())
		if err != nil {
			return
		}
		n := 0
		for {
			m, err := rd.Read(buf[n:])
			n += m
			if err == io.EOF {
				break
			}
			if err != nil {
				return
			}
			if n == len(buf) {
				if _, err := io.Copy(io.Discard, rd); err != nil {
					return
				}
				break
			}
		}
		if bytes.HasPrefix(buf[:n], msgPrefix) {
			msgs.Add(1)
		} else {
			other.Add(1)
		}
	}
}

// baselineServer starts nats-server in this process with token auth, a
// client listener and its own WebSocket listener (no TLS).
func baselineServer(token string) (*server.Server, string, error) {
	opts := &server.Options{
		Host:          "127.0.0.1",
		Port:          -1,
		Authorization: token,
		NoSigs:        true,
		NoLog:         true,
		Websocket:     server.WebsocketOpts{Host: "127.0.0.1", Port: -1, NoTLS: true},
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, "", err
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, "", errors.New("baseline nats-server not ready")
	}
	p := s.PortsInfo(10 * time.Second)
	if p == nil || len(p.WebSocket) == 0 {
		s.Shutdown()
		return nil, "", errors.New("baseline nats-server has no WebSocket listener")
	}
	return s, p.WebSocket[0], nil
}

// fanSide is one side of the fan-out row.
type fanSide struct {
	name      string
	publish   func(n int, data []byte) error // a burst of n messages, flushed
	delivered atomic.Int64                   // msg deliveries counted by the subscribers
	other     atomic.Int64                   // other frames (slow-consumer notices …)

	srv     *proc // for CPU accounting (nil: this process)
	cpu     cpuTimes
	writes  func() int64 // write syscalls of the process serving the subscribers
	syscw   int64        // those during measured bursts
	rounds  int
	total   time.Duration
	counted int64
	lost    int64
	bursts  []time.Duration
}

// round publishes a burst and waits until every subscriber has all of it.
func (f *fanSide) round(n, subs int, data []byte, measure bool) error {
	start := f.delivered.Load()
	target := start + int64(n)*int64(subs)
	c0, w0 := f.srv.cpuNow(), f.writes()
	t0 := time.Now()
	if err := f.publish(n, data); err != nil {
		return err
	}
	got := waitAtLeast(&f.delivered, target, 30*time.Second)
	d := time.Since(t0)
	if measure {
		f.cpu = f.cpu.add(f.srv.cpuNow().sub(c0))
		f.syscw += f.writes() - w0
		f.rounds++
		f.total += d
		f.counted += got - start
		f.bursts = append(f.bursts, d)
	}
	if got < target {
		f.lost += target - got
		return fmt.Errorf("%s: %s of %s deliveries within 30 s", f.name, fmtInt(float64(got-start)), fmtInt(float64(target-start)))
	}
	return nil
}

func (f *fanSide) rate() float64 { return float64(f.counted) / f.total.Seconds() }

func (f *fanSide) String() string {
	slices.Sort(f.bursts)
	s := fmt.Sprintf("%s msg/s delivered (%d bursts, median burst %s)", fmtInt(f.rate()), f.rounds, fmtDur(percentile(f.bursts, 0.5)))
	if f.lost > 0 {
		s += fmt.Sprintf(", **%s lost**", fmtInt(float64(f.lost)))
	}
	if n := f.other.Load(); n > 0 {
		s += fmt.Sprintf(", **%d non-msg frames**", n)
	}
	s += "; " + f.cpu.cores(f.total)
	if f.srv != nil {
		s += fmt.Sprintf("; %s: %.2f µs CPU per delivered message", f.srv.kind, f.cpuPerMsg())
	}
	return s
}

// cpuPerMsg is the serving process's CPU per delivered message, in µs.
func (f *fanSide) cpuPerMsg() float64 {
	return float64(f.cpu.server.Microseconds()) / float64(max(f.counted, 1))
}

// natsBurst publishes n messages on nc and flushes.
func natsBurst(nc *nats.Conn) func(int, []byte) error {
	return func(n int, data []byte) error {
		for range n {
			if err := nc.Publish("bench.fanout", data); err != nil {
				return err
			}
		}
		return nc.Flush()
	}
}

// rowFanout: deliveries/s to subscribed gateway sessions ÷ the same number
// of nats.go clients on nats-server's own WebSocket listener.
func (b *bench) rowFanout(ctx context.Context, r *row) error {
	o := b.o
	g, err := b.startGateway(ctx, "fanout")
	if err != nil {
		return err
	}
	defer g.stop()
	bs, wsURL, err := baselineServer(g.token)
	if err != nil {
		return err
	}
	defer bs.Shutdown()

	cf, err := b.startCentrifugo(ctx, b.tmp, "fanout")
	if err != nil {
		return err
	}
	defer cf.stop()

	gw := &fanSide{name: "gateway", srv: &g.proc, writes: g.writeSyscalls}
	base := &fanSide{name: "nats-server websocket", writes: func() int64 { return writeSyscalls("self") }}
	cfs := &fanSide{name: "Centrifugo", srv: &cf.proc, writes: cf.writeSyscalls}

	t := time.Now()
	conns := make([]*websocket.Conn, o.subs)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.CloseNow()
			}
		}
	}()
	err = parallel(ctx, o.subs, o.dialConc, func(ctx context.Context, i int) error {
		c, err := dialSession(ctx, g)
		if err != nil {
			return err
		}
		conns[i] = c
		if err := subscribe(ctx, c, "f", "bench.fanout"); err != nil {
			return err
		}
		go frameCounter(c, &gw.delivered, &gw.other)
		return nil
	})
	if err != nil {
		return fmt.Errorf("gateway sessions: %w", err)
	}
	logf("fanout: %d gateway sessions subscribed in %s", o.subs, time.Since(t).Round(time.Millisecond))

	t = time.Now()
	ncs := make([]*nats.Conn, o.subs)
	defer func() {
		for _, nc := range ncs {
			if nc != nil {
				nc.Close()
			}
		}
	}()
	err = parallel(ctx, o.subs, o.dialConc, func(ctx context.Context, i int) error {
		nc, err := nats.Connect(wsURL, nats.Token(g.token), nats.NoReconnect(), nats.Name("bench-fanout"))
		if err != nil {
			return err
		}
		ncs[i] = nc
		if _, err := nc.Subscribe("bench.fanout", func(*nats.Msg) { base.delivered.Add(1) }); err != nil {
			return err
		}
		return nc.Flush()
	})
	if err != nil {
		return fmt.Errorf("nats WebSocket clients: %w", err)
	}
	logf("fanout: %d nats.go clients on %s subscribed in %s", o.subs, wsURL, time.Since(t).Round(time.Millisecond))

	t = time.Now()
	cfConns := make([]*cfClient, o.subs)
	defer func() {
		for _, c := range cfConns {
			if c != nil {
				c.c.CloseNow()
			}
		}
	}()
	jwt := cf.jwt("bench")
	err = parallel(ctx, o.subs, o.dialConc, func(ctx context.Context, i int) error {
		c, err := dialCentrifugo(ctx, cf.addr, jwt, centrifugoChannel, &cfs.delivered, &cfs.other, nil)
		cfConns[i] = c
		return err
	})
	if err != nil {
		return fmt.Errorf("centrifugo clients: %w", err)
	}
	logf("fanout: %d Centrifugo clients subscribed in %s", o.subs, time.Since(t).Round(time.Millisecond))

	gwPub, err := nats.Connect(g.natsURL, nats.Token(g.token), nats.Name("bench-fanout-pub"))
	if err != nil {
		return err
	}
	defer gwPub.Close()
	basePub, err := nats.Connect(bs.ClientURL(), nats.Token(g.token), nats.Name("bench-fanout-pub"))
	if err != nil {
		return err
	}
	defer basePub.Close()
	gw.publish, base.publish = natsBurst(gwPub), natsBurst(basePub)
	cfPub := httpClient(1)
	cfs.publish = func(n int, data []byte) error {
		_, err := cf.apiOp(cfPub, "batch", centrifugoBatch(n, data), n)(ctx)
		return err
	}

	data := payload(o.fanoutBytes)
	// Warm-up burst each, unmeasured.
	for _, s := range []*fanSide{gw, cfs, base} {
		if err := s.round(o.fanoutMsgs, o.subs, data, false); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	sides := []*fanSide{gw, cfs, base}
	var errs []error
	failed := map[*fanSide]bool{}
	more := func(s *fanSide) bool { return !failed[s] && s.total < o.duration }
	for i := 0; more(gw) || more(cfs) || more(base); i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		for k := range sides {
			s := sides[(i+k)%len(sides)] // each round starts with the next side
			if !more(s) {
				continue
			}
			if err := s.round(o.fanoutMsgs, o.subs, data, true); err != nil {
				errs = append(errs, err)
				failed[s] = true // later bursts would count this one's stragglers
			}
		}
	}
	for _, err := range errs {
		logf("fanout: %v", err)
	}
	r.gateway = gw.String()
	r.baseline = "Centrifugo, one channel, JSON protocol: " + cfs.String() + "; nats-server's WebSocket listener, nats.go clients: " + base.String()
	r.goal = "≥ 2.5× Centrifugo and ≥ 1.5× nats-server"
	logf("fanout: gateway %.0f msg/s, Centrifugo %.0f msg/s, nats-server ws %.0f msg/s; write syscalls per delivered message: gateway %.3f, Centrifugo %.3f, bench process with nats-server %.3f",
		gw.rate(), cfs.rate(), base.rate(), float64(gw.syscw)/float64(max(gw.counted, 1)), float64(cfs.syscw)/float64(max(cfs.counted, 1)), float64(base.syscw)/float64(max(base.counted, 1)))
	if r.refused(gw.lost, cfs.lost, base.lost, int64(len(errs))) {
		return nil
	}
	vsC, vsN := gw.rate()/cfs.rate(), gw.rate()/base.rate()
	r.result = fmt.Sprintf("**%.2f×** Centrifugo (%.2f× its CPU per message), **%.2f×** nats-server", vsC, gw.cpuPerMsg()/cfs.cpuPerMsg(), vsN)
	r.met = verdict(vsC >= 2.5 && vsN >= 1.5)
	return nil
}

// centrifugoBatch is an /api/batch body publishing n copies of data (as a
// JSON string) to the bench channel, in order.
func centrifugoBatch(n int, data []byte) []byte {
	cmd := fmt.Appendf(nil, `{"publish":{"channel":%q,"data":%q}}`, centrifugoChannel, data)
	var b bytes.Buffer
	b.WriteString(`{"commands":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(cmd)
	}
	b.WriteString(`]}`)
	return b.Bytes()
}

// latencySample is a message's arrival: when, and the payload.
type latencySample struct {
	at   time.Time
	data []byte
}

// rowLatency: publish→subscriber latency through the gateway (HTTP POST
// in, WebSocket session out) minus direct NATS (nats.go publish + Flush →
// nats.go subscriber on the embedded server), samples interleaved.
func (b *bench) rowLatency(ctx context.Context, r *row) error {
	o := b.o
	g, err := b.startGateway(ctx, "latency")
	if err != nil {
		return err
	}
	defer g.stop()

	// Gateway path.
	ws, err := dialSession(ctx, g)
	if err != nil {
		return err
	}
	defer ws.CloseNow()
	if err := subscribe(ctx, ws, "l", "bench.lat.gw"); err != nil {
		return err
	}
	gwIn := make(chan latencySample, 16)
	go func() {
		for {
			_, data, err := ws.Read(context.Background())
			at := time.Now()
			if err != nil {
				close(gwIn)
				return
			}
			var m struct {
				Op   string `json:"op"`
				Data string `json:"data"`
			}
			if json.Unmarshal(data, &m) == nil && m.Op == "msg" {
				select {
				case gwIn <- latencySample{at: at, data: []byte(m.Data)}:
				default: // nobody waiting any more
				}
			}
		}
	}()
	hc := httpClient(1)
	pubURL := "http://" + g.addr + "/v1/publish/bench.lat.gw"

	// Direct path.
	sub, err := nats.Connect(g.natsURL, nats.Token(g.token), nats.Name("bench-lat-sub"))
	if err != nil {
		return err
	}
	defer sub.Close()
	natsIn := make(chan latencySample, 16)
	if _, err := sub.Subscribe("bench.lat.nats", func(m *nats.Msg) {
		select {
		case natsIn <- latencySample{at: time.Now(), data: m.Data}:
		default: // nobody waiting any more
		}
	}); err != nil {
		return err
	}
	if err := sub.Flush(); err != nil {
		return err
	}
	pub, err := nats.Connect(g.natsURL, nats.Token(g.token), nats.Name("bench-lat-pub"))
	if err != nil {
		return err
	}
	defer pub.Close()

	epoch := time.Now()
	stamp := func(seq int) []byte {
		return []byte(strconv.Itoa(seq) + " " + strconv.FormatInt(int64(time.Since(epoch)), 10))
	}
	// await takes the arrival of message seq and returns its latency from
	// the timestamp in its payload.
	await := func(in <-chan latencySample, seq int) (time.Duration, error) {
		timeout := time.After(5 * time.Second)
		for {
			select {
			case s, ok := <-in:
				if !ok {
					return 0, errors.New("subscriber closed")
				}
				var gotSeq int
				var sent int64
				if _, err := fmt.Sscanf(string(s.data), "%d %d", &gotSeq, &sent); err != nil || gotSeq != seq {
					continue // a stray from an earlier, timed-out sample
				}
				return s.at.Sub(epoch) - time.Duration(sent), nil
			case <-timeout:
				return 0, fmt.Errorf("message %d did not arrive within 5 s", seq)
			}
		}
	}
	viaGateway := func(seq int) (time.Duration, error) {
		body := stamp(seq)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, pubURL, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+g.token)
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			return 0, fmt.Errorf("publish: status %d", resp.StatusCode)
		}
		return await(gwIn, seq)
	}
	direct := func(seq int) (time.Duration, error) {
		if err := pub.Publish("bench.lat.nats", stamp(seq)); err != nil {
			return 0, err
		}
		if err := pub.Flush(); err != nil {
			return 0, err
		}
		return await(natsIn, seq)
	}

	// Centrifugo: HTTP API publish in, a subscribed client out.
	cf, err := b.startCentrifugo(ctx, b.tmp, "latency")
	if err != nil {
		return err
	}
	defer cf.stop()
	cfIn := make(chan latencySample, 16)
	var cfPubs, cfOther atomic.Int64
	cfc, err := dialCentrifugo(ctx, cf.addr, cf.jwt("bench"), centrifugoChannel, &cfPubs, &cfOther, func(data json.RawMessage) {
		var s string
		if json.Unmarshal(data, &s) == nil {
			select {
			case cfIn <- latencySample{at: time.Now(), data: []byte(s)}:
			default: // nobody waiting any more
			}
		}
	})
	if err != nil {
		return err
	}
	defer cfc.c.CloseNow()
	cc := httpClient(1)
	viaCentrifugo := func(seq int) (time.Duration, error) {
		body := fmt.Appendf(nil, `{"channel":%q,"data":%q}`, centrifugoChannel, stamp(seq))
		if _, err := cf.apiOp(cc, "publish", body, 1)(ctx); err != nil {
			return 0, err
		}
		return await(cfIn, seq)
	}

	warm := min(200, o.samples)
	paths := []func(int) (time.Duration, error){viaGateway, viaCentrifugo, direct}
	lat := make([][]time.Duration, len(paths))
	for i := 0; i < warm+o.samples; i++ {
		for k := range paths {
			if err := ctx.Err(); err != nil {
				return err
			}
			j := (i + k) % len(paths) // each sample starts with the next path
			d, err := paths[j](i)
			if err != nil {
				return err
			}
			if i >= warm {
				lat[j] = append(lat[j], d)
			}
		}
	}
	for _, l := range lat {
		slices.Sort(l)
	}
	g50, g99 := percentile(lat[0], 0.5), percentile(lat[0], 0.99)
	c50, c99 := percentile(lat[1], 0.5), percentile(lat[1], 0.99)
	n50, n99 := percentile(lat[2], 0.5), percentile(lat[2], 0.99)
	r.gateway = fmt.Sprintf("HTTP POST → WebSocket: p50 %s, p99 %s", fmtDur(g50), fmtDur(g99))
	r.baseline = fmt.Sprintf("Centrifugo /api/publish → WebSocket client: p50 %s, p99 %s; nats.go publish+Flush → nats.go subscriber: p50 %s, p99 %s",
		fmtDur(c50), fmtDur(c99), fmtDur(n50), fmtDur(n99))
	r.result = fmt.Sprintf("p99 **%.2f×** Centrifugo's; **+%s p99** over direct NATS (+%s p50)", float64(g99)/float64(c99), fmtDur(g99-n99), fmtDur(g50-n50))
	r.goal = "p99 ≤ Centrifugo's, ≤ +150 µs over direct NATS"
	r.met = verdict(g99 <= c99 && g99-n99 <= 150*time.Microsecond)
	logf("latency: gateway p50 %s p99 %s; Centrifugo p50 %s p99 %s; direct p50 %s p99 %s", g50, g99, c50, c99, n50, n99)
	return nil
}
