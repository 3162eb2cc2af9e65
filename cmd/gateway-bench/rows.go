package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// bench holds what the rows share.
type bench struct {
	o      *options
	bin    string
	source string  // what the gateway was built from
	procs  []*proc // every server started, for their logs
	tmp    string  // the run's scratch directory

	centrifugoBin, centrifugoVersion string
	centrifugoErr                    string // why there is no centrifugoBin
	wrkBin                           string // "" : the Go load generator
}

// row is one line of the table.
type row struct {
	name     string
	measure  string
	gateway  string
	baseline string
	result   string
	goal     string
	met      string

	background float64 // cores other processes used during the row
}

func rowTitle(name string, o *options) string {
	switch name {
	case "publish":
		return fmt.Sprintf("Confirmed HTTP publish, %d keep-alive conns, %d B body, no subscribers: natsgate vs Centrifugo vs a plain 204 handler", o.conns, o.body)
	case "jspublish":
		return fmt.Sprintf("Stored publish (/v1/js/publish), %d keep-alive conns, %d B body, memory stream", o.conns, o.body)
	case "batch":
		return fmt.Sprintf("Batch publish, %d × %d B per request, %d clients", o.batch, o.entryBytes, o.batchClients)
	case "fanout":
		return fmt.Sprintf("WebSocket fan-out to %s subscribers of one subject (channel), bursts of %s × %d B: natsgate vs Centrifugo vs nats-server", fmtInt(float64(o.subs)), fmtInt(float64(o.fanoutMsgs)), o.fanoutBytes)
	case "latency":
		return fmt.Sprintf("Publish→subscriber latency, HTTP in → WebSocket out, %s samples, one at a time: natsgate vs Centrifugo vs direct NATS", fmtInt(float64(o.samples)))
	case "rss":
		return fmt.Sprintf("Gateway RSS per idle authenticated WebSocket session, at %s", fmtInt(float64(o.sessions)))
	case "rsssub":
		return fmt.Sprintf("RSS per idle WebSocket session subscribed to one subject (channel), one token for all, at %s", fmtInt(float64(o.sessions)))
	case "rssuser":
		return fmt.Sprintf("RSS per idle subscribed WebSocket session, **a token each** (a JWT per user), at %s", fmtInt(float64(o.sessions)))
	case "kv":
		return fmt.Sprintf("Key-value GET and PUT over HTTP, %d keep-alive conns, %d B values", o.conns, o.body)
	case "jsreplay":
		return fmt.Sprintf("JetStream fan-out replay: %s WebSocket subscribers each reading the same %s stored messages of %d B from seq 1 (deliver all), memory stream",
			fmtInt(float64(o.replaySubs)), fmtInt(float64(o.replayMsgs)), o.fanoutBytes)
	}
	return name
}

func (b *bench) runRow(ctx context.Context, name string) (row, error) {
	r := row{name: name, measure: rowTitle(name, b.o)}
	var err error
	switch name {
	case "publish":
		err = b.rowPublish(ctx, &r)
	case "jspublish":
		err = b.rowJSPublish(ctx, &r)
	case "batch":
		err = b.rowBatch(ctx, &r)
	case "fanout":
		err = b.rowFanout(ctx, &r)
	case "latency":
		err = b.rowLatency(ctx, &r)
	case "rss":
		err = b.rowRSS(ctx, &r)
	case "rsssub":
		err = b.rowRSSShared(ctx, &r)
	case "rssuser":
		err = b.rowRSSUser(ctx, &r)
	case "kv":
		err = b.rowKV(ctx, &r)
	case "jsreplay":
		err = b.rowJSReplay(ctx, &r)
	}
	return r, err
}

func verdict(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

func payload(n int) []byte {
	p := bytes.Repeat([]byte("0123456789abcdef"), n/16+1)
	return p[:n]
}

// describe renders a tally: rate, percentiles and errors.
func describe(t *tally, unit string, rate float64) string {
	s := fmt.Sprintf("%s %s (p50 %s, p99 %s)", fmtInt(rate), unit, fmtDur(percentile(t.lat, 0.50)), fmtDur(percentile(t.lat, 0.99)))
	if t.errs > 0 {
		s += fmt.Sprintf(", **%d errors** (%s)", t.errs, t.firstErr)
	} else {
		s += ", 0 errors"
	}
	return s + "; " + t.cpu.cores(t.elapsed)
}

// rowPublish: POST /v1/publish/bench through the gateway ÷ Centrifugo's
// /api/publish ÷ a plain net/http handler answering 204, the same load
// generator (wrk when installed) for all three.
func (b *bench) rowPublish(ctx context.Context, r *row) error {
	o := b.o
	g, err := b.startGateway(ctx, "publish")
	if err != nil {
		return err
	}
	defer g.stop()
	cf, err := b.startCentrifugo(ctx, b.tmp, "publish")
	if err != nil {
		return err
	}
	defer cf.stop()
	plain, stopPlain, err := plainServer()
	if err != nil {
		return err
	}
	defer stopPlain()

	body := payload(o.body)
	cfBody := fmt.Appendf(nil, `{"channel":%q,"data":%q}`, centrifugoChannel, body)
	// One request each first: a side that cannot answer fails the row
	// here, with its reason, rather than as a count of errors.
	if _, err := httpOp(httpClient(1), "http://"+g.addr+"/v1/publish/bench", g.token, "application/octet-stream", body, 1)(ctx); err != nil {
		return fmt.Errorf("gateway publish: %w", err)
	}
	if _, err := cf.apiOp(httpClient(1), "publish", cfBody, 1)(ctx); err != nil {
		return fmt.Errorf("centrifugo publish: %w", err)
	}
	gw := side{srv: &g.proc}
	cs := side{srv: &cf.proc}
	ps := side{}
	if b.wrkBin != "" {
		load := func(url string, headers map[string]string, body []byte, want int, reject string) *wrkLoad {
			return &wrkLoad{bin: b.wrkBin, dir: b.tmp, url: url, headers: headers, body: body, want: want, reject: reject, conns: o.conns}
		}
		bearer := map[string]string{"Authorization": "Bearer " + g.token, "Content-Type": "application/octet-stream"}
		gw.wrk = load("http://"+g.addr+"/v1/publish/bench", bearer, body, http.StatusNoContent, "")
		cs.wrk = load(cf.publishURL(), cf.apiHeaders(), cfBody, http.StatusOK, `"error"`)
		ps.wrk = load("http://"+plain+"/v1/publish/bench", bearer, body, http.StatusNoContent, "")
	} else {
		gc, cc, pc := httpClient(o.conns), httpClient(o.conns), httpClient(o.conns)
		for range o.conns {
			gw.ops = append(gw.ops, httpOp(gc, "http://"+g.addr+"/v1/publish/bench", g.token, "application/octet-stream", body, 1))
			cs.ops = append(cs.ops, cf.apiOp(cc, "publish", cfBody, 1))
			ps.ops = append(ps.ops, httpOp(pc, "http://"+plain+"/v1/publish/bench", g.token, "application/octet-stream", body, 1))
		}
	}
	t, err := sideBySide(ctx, o, gw, cs, ps)
	if err != nil {
		return err
	}
	tg, tc, tp := t[0], t[1], t[2]
	r.gateway = describe(tg, "req/s", tg.opsPerSec())
	r.baseline = fmt.Sprintf("Centrifugo /api/publish (%d B JSON body): %s; plain net/http 204 handler: %s; load generator: %s",
		len(cfBody), describe(tc, "req/s", tc.opsPerSec()), describe(tp, "req/s", tp.opsPerSec()), b.loadGen())
	r.goal = "≥ 1.3× Centrifugo and ≥ 0.75× plain"
	logf("publish: gateway %.0f req/s (%d errors), Centrifugo %.0f req/s (%d errors), plain %.0f req/s (%d errors)",
		tg.opsPerSec(), tg.errs, tc.opsPerSec(), tc.errs, tp.opsPerSec(), tp.errs)
	if r.refused(tg.errs, tc.errs, tp.errs) {
		return nil
	}
	vsC, vsP := tg.opsPerSec()/tc.opsPerSec(), tg.opsPerSec()/tp.opsPerSec()
	r.result = fmt.Sprintf("**%.2f×** Centrifugo, **%.2f×** plain", vsC, vsP)
	r.met = verdict(vsC >= 1.3 && vsP >= 0.75)
	return nil
}

// loadGen names the HTTP load generator of the publish row.
func (b *bench) loadGen() string {
	if b.wrkBin != "" {
		return fmt.Sprintf("wrk (%d conns, 2 threads)", b.o.conns)
	}
	return fmt.Sprintf("Go closed loop (%d conns; slower than wrk: it shares the cores and squeezes ratios toward 1)", b.o.conns)
}

// refused reports, when any side counted errors, that the row has no
// ratio, and says so in its result.
func (r *row) refused(errs ...int64) bool {
	var n int64
	for _, e := range errs {
		n += e
	}
	if n == 0 {
		return false
	}
	r.result = fmt.Sprintf("— (no ratio: a side had %d errors or lost messages)", n)
	r.met = "**errors**"
	return true
}

// rowJSPublish: POST /v1/js/publish/bench.js.x through the gateway ÷
// nats.go's jetstream Publish (which waits for the stream's ack) from as
// many goroutines over one connection, as the gateway has one per token,
// into the same memory stream on the gateway's embedded server.
func (b *bench) rowJSPublish(ctx context.Context, r *row) error {
	o := b.o
	g, err := b.startGateway(ctx, "jspublish")
	if err != nil {
		return err
	}
	defer g.stop()
	const subject = "bench.js.x"
	cfg := []byte(`{"subjects":["bench.js.>"],"storage":"memory","max_msgs":1000000,"discard":"old"}`)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+g.addr+"/v1/streams/BENCH", bytes.NewReader(cfg))
	req.Header.Set("Authorization", "Bearer "+g.token)
	resp, err := httpClient(1).Do(req)
	if err != nil {
		return fmt.Errorf("create stream: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("create stream: status %d", resp.StatusCode)
	}
	nc, err := nats.Connect(g.natsURL, nats.Token(g.token), nats.Name("bench-js"), nats.NoReconnect())
	if err != nil {
		return fmt.Errorf("nats connect: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}

	body := payload(o.body)
	gc := httpClient(o.conns)
	gwOps := make([]op, o.conns)
	natsOps := make([]op, o.conns)
	for i := range gwOps {
		gwOps[i] = httpOpWant(gc, "http://"+g.addr+"/v1/js/publish/"+subject, g.token, "application/octet-stream", body, 1, http.StatusOK)
		natsOps[i] = func(ctx context.Context) (int, error) {
			if _, err := js.Publish(ctx, subject, body); err != nil {
				return 0, err
			}
			return 1, nil
		}
	}
	t, err := sideBySide(ctx, o, side{srv: &g.proc, ops: gwOps}, side{srv: &g.proc, ops: natsOps})
	if err != nil {
		return err
	}
	tg, tn := t[0], t[1]
	r.gateway = describe(tg, "req/s", tg.opsPerSec())
	r.baseline = fmt.Sprintf("nats.go jetstream Publish, %d goroutines on one connection: ", o.conns) + describe(tn, "msg/s", tn.opsPerSec())
	r.goal = "— (informational; measured, kept in the table)"
	r.met = "—"
	if !r.refused(tg.errs, tn.errs) {
		r.result = fmt.Sprintf("**%.2f×**", tg.opsPerSec()/tn.opsPerSec())
	}
	logf("jspublish: gateway %.0f req/s (%d errors), nats.go %.0f msg/s (%d errors)", tg.opsPerSec(), tg.errs, tn.opsPerSec(), tn.errs)
	return nil
}

// rowBatch: POST /v1/publish with NDJSON batches ÷ nats.go publishing the
// same batches, each followed by Flush, on the gateway's embedded server.
func (b *bench) rowBatch(ctx context.Context, r *row) error {
	o := b.o
	g, err := b.startGateway(ctx, "batch")
	if err != nil {
		return err
	}
	defer g.stop()

	const subject = "bench.batch"
	data := payload(o.entryBytes)
	var nd bytes.Buffer
	for i := 0; i < o.batch; i++ {
		fmt.Fprintf(&nd, `{"subject":%q,"data":%q}`+"\n", subject, data)
	}
	body := nd.Bytes()

	gc := httpClient(o.batchClients)
	gwOps := make([]op, o.batchClients)
	natsOps := make([]op, o.batchClients)
	for i := range gwOps {
		gwOps[i] = httpOp(gc, "http://"+g.addr+"/v1/publish", g.token, "application/x-ndjson", body, o.batch)
		nc, err := nats.Connect(g.natsURL, nats.Token(g.token), nats.Name("bench-batch"), nats.NoReconnect())
		if err != nil {
			return fmt.Errorf("nats connect: %w", err)
		}
		defer nc.Close()
		natsOps[i] = func(context.Context) (int, error) {
			for j := 0; j < o.batch; j++ {
				if err := nc.Publish(subject, data); err != nil {
					return 0, err
				}
			}
			if err := nc.FlushTimeout(30 * time.Second); err != nil {
				return 0, err
			}
			return o.batch, nil
		}
	}
	t, err := sideBySide(ctx, o, side{srv: &g.proc, ops: gwOps}, side{srv: &g.proc, ops: natsOps})
	if err != nil {
		return err
	}
	tg, tn := t[0], t[1]
	r.gateway = describe(tg, "msg/s", tg.msgsPerSec()) + fmt.Sprintf("; %s B bodies", fmtInt(float64(len(body))))
	r.baseline = "nats.go Publish ×" + fmtInt(float64(o.batch)) + " + Flush: " + describe(tn, "msg/s", tn.msgsPerSec())
	r.goal = "≥ 0.4×"
	if !r.refused(tg.errs, tn.errs) {
		ratio := tg.msgsPerSec() / tn.msgsPerSec()
		r.result = fmt.Sprintf("**%.2f×**", ratio)
		r.met = verdict(ratio >= 0.4)
	}
	logf("batch: gateway %.0f msg/s (%d errors), nats.go %.0f msg/s (%d errors)", tg.msgsPerSec(), tg.errs, tn.msgsPerSec(), tn.errs)
	return nil
}

func fmtInt(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

func fmtDur(d time.Duration) string {
	switch {
	case d < 0:
		return "−" + fmtDur(-d)
	case d < time.Millisecond:
		return fmt.Sprintf("%d µs", d.Microseconds())
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}
