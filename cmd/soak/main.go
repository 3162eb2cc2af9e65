// Command soak runs the gateway under a mixed load on loopback for a
// while, with a NATS outage and a gateway SIGKILL, and reports what was
// lost or duplicated, the errors clients saw, and the gateway's memory
// and goroutines.
//
//	go run ./cmd/soak -duration 90s
//
// It starts a nats-server in-process (token auth, JetStream with file
// storage, a free loopback port), builds the gateway and runs it as a
// subprocess in front of that server (--nats-url, --nats-listen off, a
// fixed HTTP port), then runs publishers (single and batch POSTs), SSE
// and WebSocket subscribers, HTTP and WebSocket requesters against a
// native responder, and the JetStream part: stored publishers (POST
// /v1/js/publish, each message retried with its own Idempotency-Key until
// acknowledged) and JetStream subscribers reading the stream from seq 1
// over SSE (resuming with Last-Event-ID) and WebSocket (resuming with
// start_seq). At a third of the run it shuts the nats-server down and
// starts a new one on the same port and store a few seconds later; at
// two thirds it kills the gateway with SIGKILL and starts it again on the
// same port. Every core message carries a unique sequence number, so the
// report can tell, per subscriber, which acknowledged (204) publishes
// never arrived and which arrived twice; the stream, read from the
// nats-server at the end, is what every JetStream subscriber must have
// received, once each, in order.
//
// Exit status: 0 when nothing acknowledged outside the outage windows was
// lost, nothing was duplicated, every stored message reached every
// JetStream subscriber once and in order, every stored publish was
// stored exactly once, and the gateway's goroutines came back; 1
// otherwise; 2 when the run itself could not be set up.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/natsgate/natsgate/internal/gatewayproc"
)

type options struct {
	duration   time.Duration
	publishers int
	sse        int
	ws         int
	requesters int
	rate       float64
	batchEvery int
	batchSize  int
	outage     time.Duration
	margin     time.Duration

	jsPublishers int
	jsRate       float64
	jsSSE        int
	jsWS         int
	gatewayDown  time.Duration
	strict       bool
	verbose      bool
}

func main() {
	var o options
	flag.DurationVar(&o.duration, "duration", 3*time.Minute, "how long the load runs (10s to 30m); the NATS outage is at a third of it, the gateway's SIGKILL at two thirds")
	flag.IntVar(&o.publishers, "publishers", 4, "HTTP publishers (1 to 64)")
	flag.IntVar(&o.sse, "sse", 4, "SSE subscribers to soak.> (0 to 256)")
	flag.IntVar(&o.ws, "ws", 4, "WebSocket subscribers to soak.> (0 to 256)")
	flag.IntVar(&o.requesters, "requesters", 2, "HTTP requesters on soak.echo (0 to 64); one WebSocket requester runs besides")
	flag.Float64Var(&o.rate, "rate", 50, "publish operations per second per publisher (0.1 to 2000)")
	flag.IntVar(&o.batchEvery, "batch-every", 10, "every Nth publish operation is a batch POST /v1/publish (0: none)")
	flag.IntVar(&o.batchSize, "batch-size", 5, "entries per batch (1 to 100)")
	flag.DurationVar(&o.outage, "outage", 3*time.Second, "how long the nats-server stays down (0 to 30s)")
	flag.DurationVar(&o.margin, "margin", time.Second, "publishes acknowledged this close to the disconnect or reconnect are not counted (0 to 10s)")
	flag.IntVar(&o.jsPublishers, "js-publishers", 2, "stored (JetStream) publishers over HTTP, one message at a time each (1 to 16)")
	flag.Float64Var(&o.jsRate, "js-rate", 50, "stored publishes per second per stored publisher (0.1 to 500)")
	flag.IntVar(&o.jsSSE, "js-sse", 2, "JetStream subscribers over SSE, resuming with Last-Event-ID (0 to 64)")
	flag.IntVar(&o.jsWS, "js-ws", 2, "JetStream subscribers over WebSocket, resuming with start_seq (0 to 64)")
	flag.DurationVar(&o.gatewayDown, "gateway-down", 2*time.Second, "how long the gateway stays down after its SIGKILL (0 to 30s)")
	flag.BoolVar(&o.strict, "strict", false, "also fail when a publish answered 204 across the reconnect (inside the outage window) was not delivered")
	flag.BoolVar(&o.verbose, "v", false, "print the gateway's log at the end")
	flag.Parse()
	if err := o.check(); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, o)
	stop()
	os.Exit(code)
}

func (o *options) check() error {
	switch {
	case flag.NArg() > 0:
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	case o.duration < 10*time.Second || o.duration > 30*time.Minute:
		return errors.New("-duration must be between 10s and 30m")
	case o.publishers < 1 || o.publishers > 64:
		return errors.New("-publishers must be between 1 and 64")
	case o.sse < 0 || o.sse > 256 || o.ws < 0 || o.ws > 256 || o.sse+o.ws == 0:
		return errors.New("-sse and -ws must be between 0 and 256, not both 0")
	case o.requesters < 0 || o.requesters > 64:
		return errors.New("-requesters must be between 0 and 64")
	case o.rate < 0.1 || o.rate > 2000:
		return errors.New("-rate must be between 0.1 and 2000")
	case o.batchEvery < 0 || o.batchSize < 1 || o.batchSize > 100:
		return errors.New("-batch-every must be at least 0 and -batch-size between 1 and 100")
	case o.outage < 0 || o.outage > 30*time.Second:
		return errors.New("-outage must be between 0 and 30s")
	case o.margin < 0 || o.margin > 10*time.Second:
		return errors.New("-margin must be between 0 and 10s")
	case o.jsPublishers < 1 || o.jsPublishers > 16:
		return errors.New("-js-publishers must be between 1 and 16")
	case o.jsRate < 0.1 || o.jsRate > 500:
		return errors.New("-js-rate must be between 0.1 and 500")
	case o.jsSSE < 0 || o.jsSSE > 64 || o.jsWS < 0 || o.jsWS > 64:
		return errors.New("-js-sse and -js-ws must be between 0 and 64")
	case o.gatewayDown < 0 || o.gatewayDown > 30*time.Second:
		return errors.New("-gateway-down must be between 0 and 30s")
	}
	return nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "soak %s: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// run is the whole soak; its result is the exit status.
func run(ctx context.Context, o options) int {
	// Everything below is bounded: the load by -duration, the set-up and
	// tear-down by their own timeouts, the whole by this.
	ctx, cancel := context.WithTimeout(ctx, o.duration+5*time.Minute)
	defer cancel()

	token := gatewayproc.Token()
	port, err := gatewayproc.FreePort()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	tmp, err := os.MkdirTemp("", "natsgate-soak-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	defer os.RemoveAll(tmp)
	storeDir := filepath.Join(tmp, "jetstream")
	ns, err := startNATS(port, token, storeDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	var nsMu sync.Mutex
	defer func() {
		nsMu.Lock()
		defer nsMu.Unlock()
		if ns != nil {
			ns.Shutdown()
			ns.WaitForShutdown()
		}
	}()
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", port)
	logf("nats-server on %s, JetStream in %s", natsURL, storeDir)

	logf("building the gateway")
	bin, err := buildGateway(ctx, tmp)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	// A fixed HTTP port: clients find the gateway again after its restart.
	httpPort, err := gatewayproc.FreePort()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	listen := fmt.Sprintf("127.0.0.1:%d", httpPort)
	gw, err := startGateway(ctx, bin, natsURL, token, listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	var gwMu sync.Mutex
	defer func() {
		gwMu.Lock()
		defer gwMu.Unlock()
		gw.kill()
	}()
	logf("gateway pid %d on %s", gw.cmd.Process.Pid, gw.base)

	// A native responder on soak.echo, reconnecting forever like the gateway.
	resp, err := nats.Connect(natsURL, nats.Token(token), nats.Name("soak-responder"),
		nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak: responder:", err)
		return 2
	}
	defer resp.Close()
	if _, err := resp.Subscribe("soak.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		fmt.Fprintln(os.Stderr, "soak: responder:", err)
		return 2
	}
	_ = resp.Flush()

	sk := newSoak(o, gw.base, token)
	defer sk.closeIdle()
	// Warm-up: the gateway's NATS connection for the token exists before
	// the idle figures are taken.
	if err := sk.warmUp(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err, "\n"+gw.log.String())
		return 2
	}
	if err := sk.createStream(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err, "\n"+gw.log.String())
		return 2
	}
	sk.closeIdle()
	time.Sleep(500 * time.Millisecond)
	idle := gw.sample("idle (no clients yet)", 0)

	// Subscribers first; the load starts once all are subscribed.
	subCtx, stopSubs := context.WithCancel(ctx)
	defer stopSubs()
	var subWG sync.WaitGroup
	for i := range o.sse {
		s := sk.addSubscriber(fmt.Sprintf("sse-%d", i+1), "sse")
		subWG.Go(func() { sk.runSSE(subCtx, s) })
	}
	for i := range o.ws {
		s := sk.addSubscriber(fmt.Sprintf("ws-%d", i+1), "ws")
		subWG.Go(func() { sk.runWSSubscriber(subCtx, s) })
	}
	for i := range o.jsSSE {
		s := sk.addJSSubscriber(fmt.Sprintf("js-sse-%d", i+1), "sse")
		subWG.Go(func() { sk.runJSSSE(subCtx, s) })
	}
	for i := range o.jsWS {
		s := sk.addJSSubscriber(fmt.Sprintf("js-ws-%d", i+1), "ws")
		subWG.Go(func() { sk.runJSWS(subCtx, s) })
	}
	if err := sk.waitSubscribed(ctx, 15*time.Second); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err, "\n"+gw.log.String())
		return 2
	}

	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var loadWG sync.WaitGroup
	sk.t0 = time.Now()
	logf("load started: %d publishers at %g/s, %d SSE, %d WebSocket subscribers, %d HTTP requesters + 1 WebSocket requester; %d stored publishers at %g/s, %d SSE and %d WebSocket JetStream subscribers; for %v",
		o.publishers, o.rate, o.sse, o.ws, o.requesters, o.jsPublishers, o.jsRate, o.jsSSE, o.jsWS, o.duration)
	for p := range o.publishers {
		loadWG.Go(func() { sk.publisher(loadCtx, p) })
	}
	for p := range o.jsPublishers {
		loadWG.Go(func() { sk.jsPublisher(loadCtx, p+1) })
	}
	for r := range o.requesters {
		loadWG.Go(func() { sk.httpRequester(loadCtx, r) })
	}
	loadWG.Go(func() { sk.wsRequester(loadCtx) })

	warm := min(5*time.Second, o.duration/10)
	if !sleepCtx(ctx, warm) {
		return 2
	}
	start := gw.sample("start (load running, after warm-up)", time.Since(sk.t0))

	// The NATS outage, at a third.
	if !sleepCtx(ctx, time.Until(sk.t0.Add(o.duration/3))) {
		return 2
	}
	logf("shutting the nats-server down")
	sk.downAt = time.Now()
	nsMu.Lock()
	ns.Shutdown()
	ns.WaitForShutdown()
	ns = nil
	nsMu.Unlock()
	sk.downDone = time.Now()
	sleepCtx(ctx, o.outage)
	var newNS *server.Server
	for i := 0; ; i++ { // the port is ours; retry briefly should it linger
		if newNS, err = startNATS(port, token, storeDir); err == nil || i == 20 || ctx.Err() != nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak: restarting the nats-server:", err)
		return 2
	}
	nsMu.Lock()
	ns = newNS
	nsMu.Unlock()
	sk.upAt = time.Now()
	logf("nats-server back on %s after %v", natsURL, sk.upAt.Sub(sk.downAt).Round(time.Millisecond))

	// The gateway's SIGKILL, at two thirds: no shutdown of any kind; the
	// same binary starts again on the same port after -gateway-down.
	if !sleepCtx(ctx, time.Until(sk.t0.Add(2*o.duration/3))) {
		return 2
	}
	logf("killing the gateway (SIGKILL, pid %d)", gw.cmd.Process.Pid)
	sk.killAt = time.Now()
	gwMu.Lock()
	gw.kill()
	gwMu.Unlock()
	sleepCtx(ctx, o.gatewayDown)
	var newGW *gatewayProc
	for i := 0; ; i++ { // the port is ours; retry briefly should it linger
		if newGW, err = startGateway(ctx, bin, natsURL, token, listen); err == nil || i == 20 || ctx.Err() != nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak: restarting the gateway:", err)
		return 2
	}
	gwMu.Lock()
	killedLog := gw.log.String()
	gw = newGW
	gwMu.Unlock()
	sk.gwUpAt = time.Now()
	logf("gateway back, pid %d on %s, %v after the kill", gw.cmd.Process.Pid, gw.base, sk.gwUpAt.Sub(sk.killAt).Round(time.Millisecond))

	if !sleepCtx(ctx, time.Until(sk.t0.Add(o.duration))) {
		return 2
	}
	end := gw.sample("end (under load)", time.Since(sk.t0))
	logf("stopping the load")
	stopLoad()
	loadWG.Wait()
	sk.stopAt = time.Now()
	sleepCtx(ctx, 3*time.Second) // in-flight deliveries reach the subscribers
	stored, readErr := readStream(ctx, natsURL, token)
	if readErr == nil && len(stored) > 0 {
		logf("the stream holds %d messages; waiting for the JetStream subscribers to reach seq %d", len(stored), stored[len(stored)-1].seq)
		sk.waitJSCaughtUp(ctx, stored[len(stored)-1].seq, 30*time.Second)
	}
	logf("closing the subscribers")
	stopSubs()
	if !waitGroupTimeout(&subWG, 15*time.Second) {
		logf("some subscribers did not end within 15s")
	}
	sk.closeIdle()
	sleepCtx(ctx, 5*time.Second)
	after := gw.sample("after (5 s after the clients left)", time.Since(sk.t0))

	logf("stopping the gateway (SIGTERM)")
	exit := gw.terminate(15 * time.Second)

	ok := sk.report(os.Stdout, []sample{idle, start, end, after}, exit)
	ok = sk.jsReport(os.Stdout, stored, readErr) && ok
	if !ok || o.verbose {
		fmt.Println("\n--- the killed gateway's log, request lines left out (last 30 lines) ---")
		fmt.Println(lastLines(withoutRequests(killedLog), 30))
		fmt.Println("\n--- the restarted gateway's log, request lines left out (last 60 lines) ---")
		fmt.Println(lastLines(withoutRequests(gw.log.String()), 60))
	}
	if ctx.Err() != nil {
		return 2
	}
	if !ok {
		return 1
	}
	return 0
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func waitGroupTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// startNATS runs a token-authenticated nats-server in this process, with
// JetStream keeping its streams in storeDir (so a restart finds them).
func startNATS(port int, token, storeDir string) (*server.Server, error) {
	s, err := server.NewServer(&server.Options{
		ServerName:    "soak",
		Host:          "127.0.0.1",
		Port:          port,
		Authorization: token,
		JetStream:     true,
		StoreDir:      storeDir,
		NoSigs:        true,
		NoLog:         true,
	})
	if err != nil {
		return nil, err
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("nats-server on port %d not ready", port)
	}
	return s, nil
}

// buildGateway builds ./cmd/gateway of this module into dir.
func buildGateway(ctx context.Context, dir string) (string, error) {
	bctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	root, err := gatewayproc.ModuleRoot(bctx)
	if err != nil {
		return "", err
	}
	return gatewayproc.Build(bctx, root, dir)
}

func withoutRequests(log string) string {
	var keep []string
	for line := range strings.SplitSeq(log, "\n") {
		if !strings.Contains(line, " msg=request ") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// gatewayProc is the gateway subprocess.
type gatewayProc struct {
	cmd     *exec.Cmd
	base    string
	log     *gatewayproc.LogBuffer
	exited  chan struct{}
	waitErr error
	metrics *http.Client
}

func startGateway(ctx context.Context, bin, natsURL, token, listen string) (*gatewayProc, error) {
	g := &gatewayProc{log: &gatewayproc.LogBuffer{}, exited: make(chan struct{}), metrics: &http.Client{Timeout: 5 * time.Second}}
	g.cmd = exec.Command(bin, "--listen", listen, "--nats-url", natsURL, "--nats-listen", "off",
		"--token", token, "--shutdown-timeout", "10s", "--log-format", "text")
	g.cmd.Stdout, g.cmd.Stderr = g.log, g.log
	if err := g.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		g.waitErr = g.cmd.Wait()
		close(g.exited)
	}()
	deadline := time.After(15 * time.Second)
	for {
		if addr, ok := gatewayproc.ListenAddr(g.log.String()); ok {
			g.base = "http://" + addr
			return g, nil
		}
		select {
		case <-g.exited:
			return nil, fmt.Errorf("the gateway exited early: %v\n%s", g.waitErr, g.log)
		case <-deadline:
			g.kill()
			return nil, fmt.Errorf("the gateway did not log its address within 15s\n%s", g.log)
		case <-ctx.Done():
			g.kill()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (g *gatewayProc) kill() {
	_ = g.cmd.Process.Kill()
	<-g.exited
}

// terminate sends SIGTERM and describes how the process ended.
func (g *gatewayProc) terminate(limit time.Duration) string {
	start := time.Now()
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.exited:
		if g.waitErr != nil {
			return fmt.Sprintf("exited with %v after %v", g.waitErr, time.Since(start).Round(time.Millisecond))
		}
		return fmt.Sprintf("exited 0, %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	case <-time.After(limit):
		g.kill()
		return fmt.Sprintf("still running %v after SIGTERM; killed", limit)
	}
}

// sample is the gateway's resident memory and goroutines at one moment.
type sample struct {
	label      string
	at         time.Duration // since the load started
	rssKB      int64
	goroutines int
	err        error
}

func (g *gatewayProc) sample(label string, at time.Duration) sample {
	s := sample{label: label, at: at, rssKB: -1, goroutines: -1}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", g.cmd.Process.Pid)); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				s.rssKB, _ = strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			}
		}
	} else {
		s.err = err
	}
	resp, err := g.metrics.Get(g.base + "/metrics")
	if err != nil {
		s.err = err
		return s
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			s.goroutines = int(f)
		}
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	// The scrape is an HTTP connection of its own; do not count it later.
	g.metrics.CloseIdleConnections()
	logf("%s: RSS %s, goroutines %d", label, mib(s.rssKB), s.goroutines)
	return s
}

func mib(kb int64) string {
	if kb < 0 {
		return "?"
	}
	return fmt.Sprintf("%.1f MiB", float64(kb)/1024)
}
