package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// replaySide is one replay of the stream to every subscriber.
type replaySide struct {
	rounds    int
	total     time.Duration
	delivered int64
	lost      int64
	cpu       cpuTimes
	times     []time.Duration
}

func (s *replaySide) add(d time.Duration, got, want int64, cpu cpuTimes) {
	s.rounds++
	s.total += d
	s.delivered += got
	if got < want {
		s.lost += want - got
	}
	s.cpu = s.cpu.add(cpu)
	s.times = append(s.times, d)
}

func (s *replaySide) rate() float64 { return float64(s.delivered) / s.total.Seconds() }

func (s *replaySide) String() string {
	str := fmt.Sprintf("%s msg/s delivered (%d replays, %s each on average)", fmtInt(s.rate()), s.rounds, fmtDur(s.total/time.Duration(max(s.rounds, 1))))
	if s.lost > 0 {
		str += fmt.Sprintf(", **%s missing**", fmtInt(float64(s.lost)))
	}
	return str + "; " + s.cpu.cores(s.total)
}

// rowJSReplay: o.replaySubs WebSocket sessions each subscribing with
// deliver=all and reading the same o.replayMsgs stored messages from seq
// 1 (one ordered consumer each, the gateway's) ÷ as many nats.go ordered
// consumers on one connection to the embedded server (as the gateway has
// one per token) reading the same stream. Each replay runs from the sub
// frames (consumer creation included) until every subscriber has every
// message; the two sides alternate.
func (b *bench) rowJSReplay(ctx context.Context, r *row) error {
	o := b.o
	g, err := b.startGateway(ctx, "jsreplay")
	if err != nil {
		return err
	}
	defer g.stop()
	const subject = "bench.replay.x"
	cfg := []byte(`{"subjects":["bench.replay.>"],"storage":"memory"}`)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+g.addr+"/v1/streams/REPLAY", bytes.NewReader(cfg))
	req.Header.Set("Authorization", "Bearer "+g.token)
	resp, err := httpClient(1).Do(req)
	if err != nil {
		return fmt.Errorf("create stream: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("create stream: status %d", resp.StatusCode)
	}
	nc, err := nats.Connect(g.natsURL, nats.Token(g.token), nats.Name("bench-replay"))
	if err != nil {
		return fmt.Errorf("nats connect: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	data := payload(o.fanoutBytes)
	t := time.Now()
	for i := 0; i < o.replayMsgs; i++ {
		if _, err := js.PublishAsync(subject, data); err != nil {
			return fmt.Errorf("storing: %w", err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(60 * time.Second):
		return fmt.Errorf("storing %d messages: not acknowledged within 60 s", o.replayMsgs)
	}
	logf("jsreplay: %s messages of %d B stored in %s", fmtInt(float64(o.replayMsgs)), o.fanoutBytes, time.Since(t).Round(time.Millisecond))

	want := int64(o.replaySubs) * int64(o.replayMsgs)
	gw, base := &replaySide{}, &replaySide{}
	rounds := max(1, o.replayRounds)
	for i := 0; i < 2*rounds; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		gatewayTurn := i%2 == 0
		if (i/2)%2 == 1 {
			gatewayTurn = !gatewayTurn // alternate which side goes first
		}
		if gatewayTurn {
			d, got, cpu, err := b.replayGateway(ctx, g)
			if err != nil {
				return fmt.Errorf("gateway replay: %w", err)
			}
			gw.add(d, got, want, cpu)
			logf("jsreplay: gateway replay %d: %s of %s deliveries in %s", gw.rounds, fmtInt(float64(got)), fmtInt(float64(want)), d.Round(time.Millisecond))
		} else {
			d, got, cpu, err := b.replayNATS(ctx, g, js)
			if err != nil {
				return fmt.Errorf("nats.go replay: %w", err)
			}
			base.add(d, got, want, cpu)
			logf("jsreplay: nats.go replay %d: %s of %s deliveries in %s", base.rounds, fmtInt(float64(got)), fmtInt(float64(want)), d.Round(time.Millisecond))
		}
	}
	r.gateway = gw.String()
	r.baseline = fmt.Sprintf("nats.go ordered consumers (Consume, defaults), %s on one connection: ", fmtInt(float64(o.replaySubs))) + base.String()
	r.goal = "— (informational; measured, kept in the table)"
	r.met = "—"
	if !r.refused(gw.lost, base.lost) {
		r.result = fmt.Sprintf("**%.2f×**", gw.rate()/base.rate())
	}
	logf("jsreplay: gateway %.0f msg/s, nats.go %.0f msg/s", gw.rate(), base.rate())
	return nil
}

// replayGateway opens the sessions, then subscribes them all from seq 1
// and waits until each has every message; the sessions are closed after.
func (b *bench) replayGateway(ctx context.Context, g *gateway) (time.Duration, int64, cpuTimes, error) {
	o := b.o
	var delivered, other atomic.Int64
	conns := make([]*websocket.Conn, o.replaySubs)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close(websocket.StatusNormalClosure, "")
			}
		}
		// Their consumers go with them; wait, so the next replay starts clean.
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) && g.metrics("natsgate_jetstream_subscriptions")["natsgate_jetstream_subscriptions"] > 0 {
			time.Sleep(50 * time.Millisecond)
		}
	}()
	err := parallel(ctx, o.replaySubs, o.dialConc, func(ctx context.Context, i int) error {
		c, err := dialSession(ctx, g)
		if err != nil {
			return err
		}
		c.SetReadLimit(1 << 20)
		conns[i] = c
		go frameCounter(c, &delivered, &other)
		return nil
	})
	if err != nil {
		return 0, 0, cpuTimes{}, fmt.Errorf("sessions: %w", err)
	}
	want := int64(o.replaySubs) * int64(o.replayMsgs)
	sub := []byte(`{"op":"sub","sid":"r","subject":"bench.replay.>","deliver":"all"}`)
	c0 := g.cpuNow()
	t0 := time.Now()
	err = parallel(ctx, o.replaySubs, o.dialConc, func(ctx context.Context, i int) error {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return conns[i].Write(wctx, websocket.MessageText, sub)
	})
	if err != nil {
		return 0, 0, cpuTimes{}, fmt.Errorf("sub frames: %w", err)
	}
	got := waitAtLeast(&delivered, want, replayTimeout)
	d := time.Since(t0)
	cpu := g.cpuNow().sub(c0)
	if n := other.Load(); n != int64(o.replaySubs) { // one ok each
		logf("jsreplay: %d frames besides msg frames (want %d oks)", n, o.replaySubs)
	}
	return d, got, cpu, nil
}

// replayTimeout bounds one replay.
const replayTimeout = 3 * time.Minute

// replayNATS runs as many ordered consumers on one nats.go connection,
// each reading the stream from seq 1 until it has every message.
func (b *bench) replayNATS(ctx context.Context, g *gateway, js jetstream.JetStream) (time.Duration, int64, cpuTimes, error) {
	o := b.o
	var delivered atomic.Int64
	var mu sync.Mutex
	var ccs []jetstream.ConsumeContext
	var names []string
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, cc := range ccs {
			cc.Stop()
		}
		dctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		_ = parallel(dctx, len(names), 16, func(ctx context.Context, i int) error {
			_ = js.DeleteConsumer(ctx, "REPLAY", names[i])
			return nil
		})
	}()
	want := int64(o.replaySubs) * int64(o.replayMsgs)
	c0 := g.cpuNow()
	t0 := time.Now()
	err := parallel(ctx, o.replaySubs, o.dialConc, func(ctx context.Context, i int) error {
		cons, err := js.OrderedConsumer(ctx, "REPLAY", jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{"bench.replay.>"}, DeliverPolicy: jetstream.DeliverAllPolicy,
		})
		if err != nil {
			return err
		}
		var n atomic.Int64
		cc, err := cons.Consume(func(m jetstream.Msg) {
			if n.Add(1) <= int64(o.replayMsgs) {
				delivered.Add(1)
			}
		})
		if err != nil {
			return err
		}
		mu.Lock()
		ccs = append(ccs, cc)
		if ci := cons.CachedInfo(); ci != nil {
			names = append(names, ci.Name)
		}
		mu.Unlock()
		return nil
	})
	if err != nil {
		return 0, 0, cpuTimes{}, fmt.Errorf("ordered consumers: %w", err)
	}
	got := waitAtLeast(&delivered, want, replayTimeout)
	return time.Since(t0), got, g.cpuNow().sub(c0), nil
}
