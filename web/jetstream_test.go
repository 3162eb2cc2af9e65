package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natsgate/natsgate/internal/gatewayproc"
)

// The tests in this file hold the browser client's JetStream promises:
// stored publishes, and subscriptions that resume by stream sequence
// after a gateway restart, a network cut and a NATS restart, seeing every
// stored message once, in order.

// putStream creates (or updates) a stream through the gateway at base.
func putStream(t *testing.T, base, name, config string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, base+"/v1/streams/"+name, strings.NewReader(config))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("PUT /v1/streams/%s: %v", name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT /v1/streams/%s: %d %s", name, resp.StatusCode, b)
	}
}

// storeHTTP stores a message with POST /v1/js/publish at base and returns
// its seq.
func storeHTTP(t *testing.T, base, subject, body string) uint64 {
	t.Helper()
	seq, err := tryStoreHTTP(base, subject, body)
	if err != nil {
		t.Fatal(err)
	}
	return seq
}

// tryStoreHTTP is storeHTTP for any goroutine. A 503 (NATS reconnecting)
// is retried for a while.
func tryStoreHTTP(base, subject, body string) (uint64, error) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		req, err := http.NewRequest(http.MethodPost, base+"/v1/js/publish/"+url.PathEscape(subject), strings.NewReader(body))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "Bearer "+adminToken)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := http.DefaultClient.Do(req.WithContext(ctx))
		if err != nil {
			cancel()
			return 0, fmt.Errorf("POST /v1/js/publish/%s: %v", subject, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		if resp.StatusCode == http.StatusServiceUnavailable && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		var ack struct{ Seq uint64 }
		if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &ack) != nil || ack.Seq == 0 {
			return 0, fmt.Errorf("POST /v1/js/publish/%s: %d %s", subject, resp.StatusCode, b)
		}
		return ack.Seq, nil
	}
}

// storeNative stores messages with a plain nats.go JetStream client on a
// server's native listener and returns their seqs.
func storeNative(t *testing.T, natsURL, subject string, bodies ...string) []uint64 {
	t.Helper()
	nc, err := nats.Connect(natsURL, nats.Token(adminToken), nats.Name("web-test-native-js"))
	if err != nil {
		t.Fatalf("native connect %s: %v", natsURL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, body := range bodies {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ack, err := js.Publish(ctx, subject, []byte(body))
		cancel()
		if err != nil {
			t.Fatalf("native JetStream publish to %s: %v", subject, err)
		}
		seqs = append(seqs, ack.Sequence)
	}
	return seqs
}

// spyJS records, in one array window.wire_ in the order they happened,
// the frames client.js sends ({dir:"out"}) and those it receives
// ({dir:"in"}), before client.js sees them. It wraps WebSocket, so it
// runs before the client opens its socket.
const spyJS = `(() => {
	window.wire_ = [];
	const Orig = WebSocket;
	window.WebSocket = class extends Orig {
		constructor(...a) {
			super(...a);
			this.addEventListener('message', (e) => wire_.push({ dir: 'in', f: JSON.parse(e.data) }));
		}
		send(d) {
			wire_.push({ dir: 'out', f: JSON.parse(d) });
			return super.send(d);
		}
	};
	return true;
})()`

// wireFrame is one frame the spy recorded.
type wireFrame struct {
	Dir string `json:"dir"`
	F   struct {
		Op       string          `json:"op"`
		Sid      string          `json:"sid"`
		Subject  string          `json:"subject"`
		Seq      uint64          `json:"seq"`
		Stream   string          `json:"stream"`
		Time     string          `json:"time"`
		Deliver  string          `json:"deliver"`
		StartSeq *uint64         `json:"start_seq"`
		Gap      json.RawMessage `json:"gap"`
		Nats     string          `json:"nats"`
	} `json:"f"`
}

func (b *browser) wire() []wireFrame {
	b.t.Helper()
	s := eval[string](b, `JSON.stringify(window.wire_)`)
	var w []wireFrame
	if err := json.Unmarshal([]byte(s), &w); err != nil {
		b.t.Fatalf("the spy's frames: %v", err)
	}
	return w
}

// checkResumes checks, from the wire, the JetStream subscription sid:
// its first sub frame has the original start (deliver, no start_seq);
// every later one asks for start_seq one past the last seq the client
// had received by then (if none, one past the seq the first ok said the
// subscription starts after); the gateway sent no seq twice. It returns
// the later sub frames' start_seqs.
func checkResumes(t *testing.T, w []wireFrame, sid, deliver string) []uint64 {
	t.Helper()
	var last uint64
	after := int64(-1) // the first ok's seq
	var resumes []uint64
	seen := map[uint64]int{}
	var twice []uint64
	subs := 0
	defer func() {
		if len(twice) > 0 {
			t.Errorf("the gateway sent %d seqs again to sid %s: %v", len(twice), sid, twice[:min(len(twice), 10)])
		}
	}()
	for _, fr := range w {
		switch {
		case fr.Dir == "in" && fr.F.Op == "msg" && fr.F.Sid == sid:
			seen[fr.F.Seq]++
			if seen[fr.F.Seq] > 1 {
				twice = append(twice, fr.F.Seq)
			}
			last = max(last, fr.F.Seq)
		case fr.Dir == "in" && fr.F.Op == "ok" && fr.F.Sid == sid && after < 0:
			after = int64(fr.F.Seq)
		case fr.Dir == "out" && fr.F.Op == "sub" && fr.F.Sid == sid:
			subs++
			want := last + 1
			if last == 0 && subs > 1 {
				want = uint64(after + 1)
			}
			if subs == 1 {
				if fr.F.Deliver != deliver || fr.F.StartSeq != nil {
					t.Errorf("sub frame %d of %s: deliver %q start_seq %v, want the original start deliver %q", subs, sid, fr.F.Deliver, fr.F.StartSeq, deliver)
				}
				continue
			}
			if fr.F.StartSeq == nil || *fr.F.StartSeq != want || fr.F.Deliver != "" {
				got := "none"
				if fr.F.StartSeq != nil {
					got = strconv.FormatUint(*fr.F.StartSeq, 10)
				}
				t.Errorf("resubscription %d of %s: start_seq %s deliver %q, want start_seq %d (last seq received %d, first ok's %d)", subs-1, sid, got, fr.F.Deliver, want, last, after)
				continue
			}
			resumes = append(resumes, *fr.F.StartSeq)
		}
	}
	if subs == 0 {
		t.Errorf("no sub frame for sid %s", sid)
	}
	return resumes
}

// seqRange is from, from+1, …, to.
func seqRange(from, to uint64) []uint64 {
	var s []uint64
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

// procGateway is the gateway as a process of its own (cmd/gateway, built
// for the test), with fixed ports and a store directory, so that it can
// be killed and started again with its streams.
type procGateway struct {
	t       *testing.T
	bin     string
	args    []string
	addr    string // HTTP host:port
	natsURL string // the embedded server's native listener
	log     *gatewayproc.LogBuffer

	cmd    *exec.Cmd
	exited chan struct{}
}

func startProcGateway(t *testing.T) *procGateway {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	root, err := gatewayproc.ModuleRoot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bin, err := gatewayproc.Build(ctx, root, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	httpPort, err := gatewayproc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	natsPort, err := gatewayproc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	g := &procGateway{t: t, bin: bin, log: &gatewayproc.LogBuffer{},
		addr:    "127.0.0.1:" + strconv.Itoa(httpPort),
		natsURL: "nats://127.0.0.1:" + strconv.Itoa(natsPort)}
	g.args = []string{"--token", adminToken, "--listen", g.addr, "--nats-listen", "127.0.0.1:" + strconv.Itoa(natsPort),
		"--store-dir", t.TempDir(), "--log-format", "text", "--shutdown-timeout", "5s"}
	t.Cleanup(func() {
		g.kill()
		if t.Failed() {
			t.Logf("gateway process log:\n%s", g.log.String())
		}
	})
	g.start()
	return g
}

// start runs the gateway and waits until /readyz answers 200.
func (g *procGateway) start() {
	g.t.Helper()
	fmt.Fprintf(g.log, "--- start %s\n", strings.Join(g.args, " "))
	g.cmd = exec.Command(g.bin, g.args...)
	g.cmd.Stdout, g.cmd.Stderr = g.log, g.log
	if err := g.cmd.Start(); err != nil {
		g.t.Fatal(err)
	}
	exited := make(chan struct{})
	g.exited = exited
	go func() {
		_ = g.cmd.Wait()
		close(exited)
	}()
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := client.Get("http://" + g.addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-exited:
			g.t.Fatalf("the gateway exited at start:\n%s", g.log.String())
		default:
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("the gateway was not ready within 20 s:\n%s", g.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill ends the process with SIGKILL: no shutdown of any kind.
func (g *procGateway) kill() {
	if g.cmd == nil || g.cmd.Process == nil {
		return
	}
	select {
	case <-g.exited:
		return
	default:
	}
	_ = g.cmd.Process.Kill()
	<-g.exited
	fmt.Fprintf(g.log, "--- killed\n")
}

// consoleSeqs are the seqs of the console's logged messages, oldest first.
func (b *browser) consoleSeqs() []uint64 {
	b.t.Helper()
	return eval[[]uint64](b, `[...document.querySelectorAll('#log .entry.msg')].map(e => Number(e.dataset.seq)).reverse()`)
}

// waitConsoleSeqs waits until the console has logged n messages.
func (b *browser) waitConsoleSeqs(n int) {
	b.t.Helper()
	b.waitJS(fmt.Sprintf("%d messages in the console's log", n), `document.querySelectorAll('#log .entry.msg').length >= `+strconv.Itoa(n))
}

// TestConsoleJetStreamSubscriptionResumesAcrossGatewayRestart is the
// issue's done-when: a console subscription on a stream keeps receiving,
// with no gap and no duplicate, across a gateway restart (SIGKILL, then
// the same binary started again on the same ports and store directory)
// during which messages were stored natively: a nats.go client publishing
// to the stream on the embedded server's native listener while the
// gateway's HTTP side is out of the browser's reach (the proxy in front
// of it is down from before the kill until after the restart).
func TestConsoleJetStreamSubscriptionResumesAcrossGatewayRestart(t *testing.T) {
	g := startProcGateway(t)
	base := "http://" + g.addr
	putStream(t, base, "ORDERS", `{"subjects":["orders.>"],"storage":"file"}`)
	for i := 1; i <= 3; i++ {
		storeHTTP(t, base, "orders.eu", fmt.Sprintf("stored %d over HTTP", i))
	}
	p := startProxy(t, g.addr)
	b := newBrowser(t)
	b.openAt(p.URL)
	eval[bool](b, spyJS)
	b.connect(adminToken)
	b.do("choosing deliver all", chromedp.SetValue(chromedp.ID("sub-deliver"), "all"))
	b.subscribe("orders.>")
	b.waitConsoleSeqs(3)
	b.waitJS("the subscription listed as JetStream", `document.querySelector('#subs li[data-jetstream="true"]').innerText.includes('deliver all')`)
	b.waitJS("seq shown on each message", `[...document.querySelectorAll('#log .entry.msg .seq')].map(e => e.textContent).join() === 'seq 3,seq 2,seq 1'`)

	p.down()
	b.waitNotice("gateway disconnected")
	before := storeNative(t, g.natsURL, "orders.eu", "native 1, gateway up", "native 2, gateway up")
	g.kill()
	g.start()
	after := storeNative(t, g.natsURL, "orders.us", "native 3, gateway restarted", "native 4, gateway restarted")
	if want := []uint64{4, 5, 6, 7}; !slices.Equal(append(before, after...), want) {
		t.Fatalf("native publishes stored at seqs %v %v, want %v (the store did not survive the kill?)", before, after, want)
	}
	p.up()
	b.waitNotice("resubscribed orders.>")
	b.waitConsoleSeqs(7)
	if seq := storeHTTP(t, base, "orders.eu", "stored 8 over HTTP, after"); seq != 8 {
		t.Fatalf("the next stored publish got seq %d, want 8", seq)
	}
	b.waitConsoleSeqs(8)
	time.Sleep(300 * time.Millisecond) // a duplicate, were one coming, would be in by now
	if got, want := b.consoleSeqs(), seqRange(1, 8); !slices.Equal(got, want) {
		t.Fatalf("the console logged seqs %v, want %v: each stored message once, in order%s", got, want, b.dump())
	}
	b.waitLog("orders.eu", "native 1, gateway up")
	b.waitLog("orders.us", "native 4, gateway restarted")
	w := b.wire()
	resumes := checkResumes(t, w, "s1", "all")
	if !slices.Contains(resumes, 4) {
		t.Errorf("no resubscription from start_seq 4 after the restart: %v", resumes)
	}
	if n := eval[int](b, `document.querySelectorAll('#errors li').length`); n != 0 {
		t.Errorf("errors shown%s", b.dump())
	}
}

// jsClient loads client.js with the spy into a page at origin and
// connects window.nc; got[] collects {seq, data, stream, time} of the
// JetStream subscription made by subscribeJS.
func jsClient(t *testing.T, origin string) *browser {
	t.Helper()
	b := newBrowser(t)
	b.openAt(origin)
	eval[bool](b, spyJS)
	b.loadClient()
	eval[bool](b, `(async () => {
		window.nc = await mod.connect({ token: `+js(adminToken)+`, reconnectDelay: 200, maxReconnectDelay: 1000 });
		window.events = [];
		for (const ev of ['status', 'gap', 'resuming', 'error', 'disconnect', 'subscribed']) {
			nc.on(ev, (d) => events.push(ev + ' ' + JSON.stringify(d, (k, v) => v instanceof Error ? v.message : v)));
		}
		return true;
	})()`)
	return b
}

// subscribeJS makes the JetStream subscription (opts a JS object literal)
// collecting into window.got; it returns its sid.
func (b *browser) subscribeJS(subject, opts string) string {
	b.t.Helper()
	return eval[string](b, `(async () => {
		window.got = [];
		window.gaps = [];
		const o = `+opts+`;
		o.onGap = (g) => gaps.push(g);
		const un = await nc.subscribe(`+js(subject)+`, (m) => got.push({ seq: m.seq, data: m.data, stream: m.stream, time: m.time }), o);
		return un.sid;
	})()`)
}

func (b *browser) gotSeqs() []uint64 {
	b.t.Helper()
	return eval[[]uint64](b, `got.map(m => m.seq)`)
}

func (b *browser) waitGot(n int) {
	b.t.Helper()
	b.waitJS(fmt.Sprintf("%d messages delivered", n), `got.length >= `+strconv.Itoa(n))
}

// TestJSClientResumesAfterNetworkCuts: stored messages keep coming while
// the network between browser and gateway is cut, twice, mid-stream; the
// subscription resumes each time from one past the last seq delivered,
// and the handler sees every one once, in order. A deliver 'new'
// subscription that has had no message yet resumes from where the
// gateway's ok said it starts: it gets what was stored while the client
// was away (and not what was stored before it).
func TestJSClientResumesAfterNetworkCuts(t *testing.T) {
	g := startGatewayWith(t, false, t.TempDir())
	putStream(t, g.URL, "CUT", `{"subjects":["cut.>"],"storage":"file"}`)
	putStream(t, g.URL, "LATER", `{"subjects":["later.>"],"storage":"file"}`)
	storeHTTP(t, g.URL, "later.x", "before")
	p := startProxy(t, g.addr)
	b := jsClient(t, p.URL)
	eval[bool](b, `(async () => {
		window.later = [];
		await nc.subscribe('later.>', (m) => later.push(m.seq), { deliver: 'new' });
		return true;
	})()`)
	sid := b.subscribeJS("cut.>", `{ deliver: 'all' }`)

	const n = 300
	var wg sync.WaitGroup
	var storeErr error
	wg.Go(func() {
		for i := 1; i <= n && storeErr == nil; i++ {
			_, storeErr = tryStoreHTTP(g.URL, "cut.x", fmt.Sprintf("m%d", i))
			if i%20 == 0 {
				time.Sleep(20 * time.Millisecond)
			}
		}
	})
	b.waitGot(30)
	p.cut()
	b.waitJS("a resubscription after the first cut", `wire_.filter(x => x.dir === 'out' && x.f.op === 'sub').length >= 2`)
	b.waitGot(eval[int](b, `got.length`) + 30)
	p.cut()
	wg.Wait()
	if storeErr != nil {
		t.Fatal(storeErr)
	}
	b.waitGot(n)
	time.Sleep(300 * time.Millisecond)
	if got, want := b.gotSeqs(), seqRange(1, n); !slices.Equal(got, want) {
		t.Fatalf("delivered seqs %v, want 1…%d once each, in order; events %v", got, n, eval[[]string](b, `events`))
	}
	if d := eval[string](b, `got[41].data + ' ' + got[41].stream + ' ' + (got[41].time.length > 20)`); d != "m42 CUT true" {
		t.Errorf("message 42: %q, want its data, stream and time", d)
	}
	if resumes := checkResumes(t, b.wire(), sid, "all"); len(resumes) < 2 {
		t.Errorf("resubscriptions from %v, want one after each of the two cuts", resumes)
	}

	p.down()
	b.waitJS("the client to see the session drop", `nc.state !== 'connected'`)
	away := storeHTTP(t, g.URL, "later.x", "while away")
	p.up()
	b.waitJS("the deliver 'new' subscription to get what was stored while away", `later.length > 0`)
	if got := eval[[]uint64](b, `later`); !slices.Equal(got, []uint64{away}) {
		t.Fatalf("the deliver 'new' subscription got seqs %v, want [%d]", got, away)
	}
}

// TestJSClientToldOfGapOnResume: messages the stream dropped (max_msgs)
// while the client was cut off are a gap: the resume from one past the
// last seq delivered gets the gateway's notice, which reaches onGap and
// the 'gap' event, then what the stream still holds.
func TestJSClientToldOfGapOnResume(t *testing.T) {
	g := startGatewayWith(t, false, t.TempDir())
	putStream(t, g.URL, "LIMITED", `{"subjects":["lim.>"],"storage":"file","max_msgs":5,"discard":"old"}`)
	for i := 1; i <= 3; i++ {
		storeHTTP(t, g.URL, "lim.x", fmt.Sprintf("m%d", i))
	}
	p := startProxy(t, g.addr)
	b := jsClient(t, p.URL)
	sid := b.subscribeJS("lim.>", `{ deliver: 'all' }`)
	b.waitGot(3)
	p.down()
	b.waitJS("the disconnect", `events.some(e => e.startsWith('disconnect'))`)
	// Stored natively meanwhile; the stream keeps 6…10.
	storeNative(t, g.natsURL(), "lim.x", "m4", "m5", "m6", "m7", "m8", "m9", "m10")
	p.up()
	b.waitGot(8)
	time.Sleep(300 * time.Millisecond)
	if got, want := b.gotSeqs(), append(seqRange(1, 3), seqRange(6, 10)...); !slices.Equal(got, want) {
		t.Fatalf("delivered seqs %v, want %v", got, want)
	}
	gaps := eval[string](b, `JSON.stringify(gaps)`)
	if want := `[{"sid":"` + sid + `","subject":"lim.>","first_seq":6,"requested_seq":4}]`; gaps != want {
		t.Errorf("onGap got %s, want %s", gaps, want)
	}
	if n := eval[int](b, `events.filter(e => e.startsWith('gap ')).length`); n != 1 {
		t.Errorf("%d gap events, want 1: %v", n, eval[[]string](b, `events`))
	}
	checkResumes(t, b.wire(), sid, "all")
}

// TestJSClientSubscriptionSurvivesNATSRestart: the gateway's NATS server
// (reached over TCP, as --nats-url; JetStream on a store directory that
// outlives it) restarts under a JetStream subscription; the stream's
// messages stored before and after reach the handler once each, in order.
func TestJSClientSubscriptionSurvivesNATSRestart(t *testing.T) {
	g := startGatewayWith(t, true, t.TempDir())
	putStream(t, g.URL, "RESTART", `{"subjects":["rs.>"],"storage":"file"}`)
	for i := 1; i <= 3; i++ {
		storeHTTP(t, g.URL, "rs.x", fmt.Sprintf("before %d", i))
	}
	b := jsClient(t, g.URL)
	sid := b.subscribeJS("rs.>", `{ start_seq: 2 }`)
	b.waitGot(2)
	u, err := url.Parse(g.natsURL())
	if err != nil {
		t.Fatal(err)
	}
	g.stopNATS()
	b.waitJS("nats disconnected", `events.some(e => e.includes('"nats":"disconnected"'))`)
	g.startNATS(u.Host)
	b.waitJS("nats reconnected", `events.some(e => e.includes('"nats":"reconnected"'))`)
	for i := 4; i <= 6; i++ {
		storeHTTP(t, g.URL, "rs.x", fmt.Sprintf("after %d", i))
	}
	b.waitGot(5)
	time.Sleep(300 * time.Millisecond)
	if got, want := b.gotSeqs(), seqRange(2, 6); !slices.Equal(got, want) {
		t.Fatalf("delivered seqs %v, want %v; events %v", got, want, eval[[]string](b, `events`))
	}
	w := b.wire()
	var last uint64
	for _, fr := range w {
		if fr.Dir == "out" && fr.F.Op == "sub" && fr.F.Sid == sid && last > 0 && (fr.F.StartSeq == nil || *fr.F.StartSeq != last+1) {
			t.Errorf("a resubscription not from start_seq %d: %+v", last+1, fr.F)
		}
		if fr.Dir == "in" && fr.F.Op == "msg" && fr.F.Sid == sid {
			last = fr.F.Seq
		}
	}
	t.Logf("events: %v", eval[[]string](b, `events`))
}

// TestJSPublishFromClient: jsPublish resolves to the stream's
// acknowledgement; a repeated msgId is a duplicate that stores nothing;
// an unmet expectation is 409 (kind conflict), no stream 404, a rejected
// token 401; headers and binary payloads reach the stream.
func TestJSPublishFromClient(t *testing.T) {
	g := startGatewayWith(t, false, t.TempDir())
	putStream(t, g.URL, "ORDERS", `{"subjects":["orders.>"],"storage":"file"}`)
	b := newBrowser(t)
	b.openAt(g.URL)
	b.loadClient()
	got := eval[map[string]any](b, `(async () => {
		const nc = await mod.connect({ token: `+js(adminToken)+` });
		const settle = (p) => p.then((v) => v, (e) => ({ status: e.status, kind: e.kind, name: e.name, message: e.message }));
		const r = {};
		r.first = await settle(nc.jsPublish('orders.eu', 'one', { msgId: 'order-1', headers: { Trace: '7' } }));
		r.again = await settle(nc.jsPublish('orders.eu', 'one', { msgId: 'order-1' }));
		r.second = await settle(nc.jsPublish('orders.eu', new Uint8Array([0, 255, 1])));
		r.conflict = await settle(nc.jsPublish('orders.eu', 'late', { headers: { 'Nats-Expected-Last-Sequence': '1' } }));
		r.nostream = await settle(nc.jsPublish('nostream.x', 'x'));
		const wrong = new mod.NatsgateClient({ token: 'not-the-token' });
		r.wrong = await settle(wrong.jsPublish('orders.eu', 'x'));
		nc.close();
		r.closed = await settle(nc.jsPublish('orders.eu', 'x'));
		return r;
	})()`)
	check := func(name, want string) {
		t.Helper()
		b, _ := json.Marshal(got[name])
		if string(b) != want {
			t.Errorf("%s: %s, want %s", name, b, want)
		}
	}
	check("first", `{"duplicate":false,"seq":1,"stream":"ORDERS"}`)
	check("again", `{"duplicate":true,"seq":1,"stream":"ORDERS"}`)
	check("second", `{"duplicate":false,"seq":2,"stream":"ORDERS"}`)
	for name, want := range map[string]struct {
		status float64
		kind   string
	}{"conflict": {409, "conflict"}, "nostream": {404, "no-stream"}, "wrong": {401, "invalid-token"}, "closed": {503, ""}} {
		e, _ := got[name].(map[string]any)
		if e["status"] != want.status || e["name"] != "NatsgateError" || (want.kind != "" && e["kind"] != want.kind) {
			t.Errorf("%s: %v, want a NatsgateError with status %v kind %q", name, got[name], want.status, want.kind)
		}
	}

	nc := g.native(adminToken)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, "ORDERS")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Errorf("the stream holds %d messages, want 2 (the duplicate and the refused ones stored nothing)", info.State.Msgs)
	}
	m1, err := s.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if string(m1.Data) != "one" || m1.Header.Get("Trace") != "7" || m1.Header.Get("Nats-Msg-Id") != "order-1" {
		t.Errorf("seq 1: %q %v, want \"one\" with Trace: 7 and Nats-Msg-Id: order-1", m1.Data, m1.Header)
	}
	m2, err := s.GetMsg(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if string(m2.Data) != "\x00\xff\x01" {
		t.Errorf("seq 2: %q, want the bytes 00 ff 01", m2.Data)
	}
}

// TestConsoleJetStreamFromSeqAndStoredPublish: the console subscribes
// from a start seq, shows each message's seq, and stores a message with
// the publish form's "stored" box, showing the acknowledgement.
func TestConsoleJetStreamFromSeqAndStoredPublish(t *testing.T) {
	g := startGatewayWith(t, false, t.TempDir())
	putStream(t, g.URL, "ORDERS", `{"subjects":["orders.>"],"storage":"file"}`)
	for i := 1; i <= 4; i++ {
		storeHTTP(t, g.URL, "orders.eu", fmt.Sprintf("order %d", i))
	}
	b := newBrowser(t)
	b.openConsole(g)
	b.connect(adminToken)
	b.do("choosing from seq", chromedp.SetValue(chromedp.ID("sub-deliver"), "start_seq"))
	eval[bool](b, `document.getElementById('sub-deliver').dispatchEvent(new Event('change'))`)
	if eval[bool](b, `document.getElementById('sub-seq').disabled || !document.getElementById('sub-queue').disabled`) {
		t.Fatalf("with 'from seq' chosen, the seq input is disabled or the queue input enabled")
	}
	b.do("entering seq 3", chromedp.SetValue(chromedp.ID("sub-seq"), "3"))
	b.subscribe("orders.>")
	b.waitConsoleSeqs(2)
	b.waitJS("the subscription listed from seq 3", `document.querySelector('#subs li[data-jetstream="true"]').innerText.includes('from seq 3')`)

	b.do("storing from the publish form",
		chromedp.SetValue(chromedp.ID("pub-subject"), "orders.eu"),
		chromedp.SetValue(chromedp.ID("pub-data"), "stored from the console"),
		chromedp.Click(chromedp.ID("pub-stored")),
		chromedp.SetValue(chromedp.ID("pub-msgid"), "console-1"),
		chromedp.Click(chromedp.ID("pub-send")))
	b.waitJS("the acknowledgement", `document.getElementById('pub-result').textContent.includes('stored in ORDERS seq 5')`)
	b.waitLog("orders.eu", "stored from the console")
	b.do("storing it again", chromedp.Click(chromedp.ID("pub-send")))
	b.waitJS("the duplicate", `document.getElementById('pub-result').textContent.includes('seq 5 (duplicate')`)
	if got, want := b.consoleSeqs(), seqRange(3, 5); !slices.Equal(got, want) {
		t.Fatalf("console seqs %v, want %v%s", got, want, b.dump())
	}
	if got := eval[string](b, `document.querySelector('#log .entry.msg[data-seq="5"] .seq').textContent`); got != "seq 5" {
		t.Errorf("seq shown as %q", got)
	}

	// No stream for the subject: the subscription is refused with 404.
	b.do("subscribing without a stream", chromedp.SetValue(chromedp.ID("sub-subject"), "nostream.>"), chromedp.Click(chromedp.ID("sub-add")))
	b.waitJS("the 404", `document.getElementById('errors').textContent.includes('404')`)
}

// TestJSClientRetriesResubscriptionUntilNATSIsBack: the gateway restarts
// while its NATS server is down, so the client's session comes back
// before NATS does and its resubscription is refused for the time being
// (503: no JetStream without NATS). The client tries again, at once when
// the gateway says NATS reconnected, from one past the last seq it
// delivered; messages stored meanwhile and after arrive once each.
func TestJSClientRetriesResubscriptionUntilNATSIsBack(t *testing.T) {
	g := startGatewayWith(t, true, t.TempDir())
	putStream(t, g.URL, "LATE", `{"subjects":["late.>"],"storage":"file"}`)
	for i := 1; i <= 3; i++ {
		storeHTTP(t, g.URL, "late.x", fmt.Sprintf("before %d", i))
	}
	b := jsClient(t, g.URL)
	sid := b.subscribeJS("late.>", `{ deliver: 'all' }`)
	b.waitGot(3)
	u, err := url.Parse(g.natsURL())
	if err != nil {
		t.Fatal(err)
	}
	g.stopNATS()
	b.waitJS("nats disconnected", `events.some(e => e.includes('"nats":"disconnected"'))`)
	g.restartHTTP()
	b.waitJS("the refused resubscription to be retried", `events.some(e => e.startsWith('resuming '))`)
	g.startNATS(u.Host)
	for i := 4; i <= 6; i++ {
		storeHTTP(t, g.URL, "late.x", fmt.Sprintf("after %d", i))
	}
	b.waitGot(6)
	time.Sleep(300 * time.Millisecond)
	if got, want := b.gotSeqs(), seqRange(1, 6); !slices.Equal(got, want) {
		t.Fatalf("delivered seqs %v, want %v; events %v", got, want, eval[[]string](b, `events`))
	}
	if resumes := checkResumes(t, b.wire(), sid, "all"); len(resumes) < 2 || resumes[len(resumes)-1] != 4 {
		t.Errorf("resubscriptions from %v, want the refused one and its retry, both from 4", resumes)
	}
	if n := eval[int](b, `nc.subscriptions.length`); n != 1 {
		t.Errorf("%d subscriptions after the retry, want 1", n)
	}
}
