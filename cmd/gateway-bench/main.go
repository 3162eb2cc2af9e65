// Command gateway-bench measures natsgate against baselines measured side
// by side in the same run, on loopback, and prints one markdown table.
//
// It builds ./cmd/gateway, runs it as a subprocess (one fresh gateway per
// row, with an embedded nats-server) and, for the rows that compare with
// it, Centrifugo v6 (installed with go install when missing), and compares:
//
//  1. confirmed HTTP publish req/s ÷ Centrifugo's /api/publish ÷ a plain
//     net/http handler answering 204 (wrk as the load generator when
//     installed);
//  2. NDJSON batch publish messages/s ÷ nats.go publish + Flush in batches;
//  3. WebSocket fan-out messages/s ÷ Centrifugo ÷ nats-server's own
//     WebSocket listener;
//  4. publish→subscriber latency (HTTP in, WebSocket out) ÷ Centrifugo's,
//     − direct NATS;
//  5. RSS per idle authenticated WebSocket session;
//  6. stored publish (/v1/js/publish) req/s ÷ nats.go's jetstream Publish;
//  7. key-value GET and PUT req/s ÷ nats.go KeyValue Get and Put;
//  8. JetStream fan-out replay: WebSocket sessions each reading the same
//     stored messages from seq 1, messages/s ÷ nats.go ordered consumers;
//  9. RSS per idle subscribed session, one token for all ÷ Centrifugo's;
//  10. RSS per idle subscribed session, a token each ÷ Centrifugo's (a JWT
//     per user).
//
// The machine is noisy, so every ratio's two sides are measured in
// alternating slices of the same run. See BENCHMARKS.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/natsgate/natsgate/internal/gatewayproc"
)

// options are the command line.
type options struct {
	duration     time.Duration // per side of rows 1-3
	slices       int           // alternations per side
	warmup       time.Duration
	conns        int // rows publish and jspublish: connections and workers
	body         int // rows publish and jspublish: body bytes
	batch        int // row 2 entries per request / per Flush
	entryBytes   int // row 2 payload per entry
	batchClients int
	subs         int // row 3 subscribers
	fanoutMsgs   int // row 3 messages per burst
	fanoutBytes  int
	samples      int // row 4
	sessions     int // row 5
	replaySubs   int // row 8 subscribers
	replayMsgs   int // row 8 stored messages each reads
	replayRounds int // row 8 replays per side
	settle       time.Duration
	dialConc     int
	rows         map[string]bool
	gatewayBin   string
	ref          string
	centrifugo   string // binary; "" : found or installed
	gatewayFlags []string
	loadGen      string // auto, wrk, go
	verbose      bool
}

var allRows = []string{"publish", "batch", "fanout", "latency", "rss", "jspublish", "kv", "jsreplay", "rsssub", "rssuser"}

func parseOptions(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("gateway-bench", flag.ContinueOnError)
	fs.DurationVar(&o.duration, "duration", 8*time.Second, "measured time per side (gateway and baseline) of the publish, batch and fan-out rows")
	fs.IntVar(&o.slices, "slices", 8, "the two sides of a throughput row alternate this many times each")
	fs.DurationVar(&o.warmup, "warmup", time.Second, "unmeasured warm-up per side before a throughput row")
	fs.IntVar(&o.conns, "conns", 64, "publish, jspublish and kv rows: keep-alive connections, one closed-loop worker each (jspublish, kv: as many nats.go goroutines)")
	fs.IntVar(&o.body, "body", 16, "publish, jspublish and kv rows: request body (value) bytes")
	fs.IntVar(&o.batch, "batch", 1000, "batch row: entries per POST /v1/publish (and messages per nats.go Flush)")
	fs.IntVar(&o.entryBytes, "entry-bytes", 16, "batch row: payload bytes per entry")
	fs.IntVar(&o.batchClients, "batch-clients", 4, "batch row: concurrent clients on each side")
	fs.IntVar(&o.subs, "subs", 1000, "fan-out row: subscribed sessions (and nats.go WebSocket clients)")
	fs.IntVar(&o.fanoutMsgs, "fanout-msgs", 1000, "fan-out row: messages per published burst")
	fs.IntVar(&o.fanoutBytes, "fanout-bytes", 32, "fan-out row: payload bytes")
	fs.IntVar(&o.samples, "samples", 2000, "latency row: samples per side")
	fs.IntVar(&o.sessions, "sessions", 10000, "rss row: idle sessions opened")
	fs.IntVar(&o.replaySubs, "replay-subs", 1000, "jsreplay row: WebSocket sessions (and nats.go ordered consumers) reading the stream from seq 1")
	fs.IntVar(&o.replayMsgs, "replay-msgs", 10000, "jsreplay row: stored messages (of -fanout-bytes) each subscriber reads")
	fs.IntVar(&o.replayRounds, "replay-rounds", 1, "jsreplay row: replays per side, alternating (each about 2 min at the defaults on 2 cores)")
	fs.DurationVar(&o.settle, "settle", 5*time.Second, "rss row: wait after opening the sessions before reading RSS")
	fs.IntVar(&o.dialConc, "dial-concurrency", 64, "WebSocket sessions opened at once")
	rows := fs.String("rows", "all", "rows to run, comma-separated: "+strings.Join(allRows, ","))
	quick := fs.Bool("quick", false, "short run (about a minute): -duration 2s -slices 2 -warmup 300ms -samples 500 -settle 2s -fanout-msgs 300 -replay-msgs 1000 -replay-rounds 1; explicit flags win")
	fs.StringVar(&o.gatewayBin, "gateway", "", "use this gateway binary instead of building ./cmd/gateway")
	fs.StringVar(&o.centrifugo, "centrifugo", "", "Centrifugo binary (default: centrifugo in PATH or go env GOBIN/GOPATH bin, else go install "+centrifugoModule+")")
	fs.StringVar(&o.loadGen, "loadgen", "auto", "HTTP load generator of the publish row: wrk, go (closed loop in this process), or auto (wrk when in PATH)")
	gwFlags := fs.String("gateway-flags", "", `extra flags for every gateway, space-separated (e.g. "--debug-listen 127.0.0.1:6060" to profile a row)`)
	fs.StringVar(&o.ref, "ref", "", "build the gateway from this git revision (exported with git archive) instead of the working tree")
	fs.BoolVar(&o.verbose, "v", false, "copy the gateway's log to stderr")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: go run ./cmd/gateway-bench [flags]\n\nBenchmarks natsgate against same-run baselines; prints a markdown table.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, v := range map[string]string{"duration": "2s", "slices": "2", "warmup": "300ms", "samples": "500", "settle": "2s", "fanout-msgs": "300", "replay-msgs": "1000", "replay-rounds": "1"} {
			if !set[name] {
				_ = fs.Set(name, v)
			}
		}
	}
	o.gatewayFlags = strings.Fields(*gwFlags)
	o.rows = map[string]bool{}
	for _, r := range strings.Split(*rows, ",") {
		r = strings.TrimSpace(strings.ToLower(r))
		switch {
		case r == "all":
			for _, a := range allRows {
				o.rows[a] = true
			}
		case r == "":
		default:
			ok := false
			for _, a := range allRows {
				ok = ok || a == r
			}
			if !ok {
				return nil, fmt.Errorf("-rows: unknown row %q (have %s)", r, strings.Join(allRows, ","))
			}
			o.rows[r] = true
		}
	}
	switch {
	case o.loadGen != "auto" && o.loadGen != "wrk" && o.loadGen != "go":
		return nil, fmt.Errorf("-loadgen: want auto, wrk or go, not %q", o.loadGen)
	case o.duration <= 0 || o.slices <= 0:
		return nil, fmt.Errorf("-duration and -slices must be positive")
	case o.conns <= 0 || o.batch <= 0 || o.batchClients <= 0 || o.subs <= 0 || o.fanoutMsgs <= 0 || o.samples <= 0 || o.sessions <= 0 || o.dialConc <= 0 ||
		o.replaySubs <= 0 || o.replayMsgs <= 0 || o.replayRounds <= 0:
		return nil, fmt.Errorf("counts must be positive")
	}
	return o, nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		if err == flag.ErrHelp {
			return
		}
		fmt.Fprintln(os.Stderr, "gateway-bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	start := time.Now()
	o, err := parseOptions(args)
	if err != nil {
		return err
	}
	nofile := raiseNoFile()
	logf("open files limit %d", nofile)

	tmp, err := os.MkdirTemp("", "gateway-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	b := &bench{o: o, bin: o.gatewayBin, source: "the binary " + o.gatewayBin, tmp: tmp}
	if b.bin == "" {
		if b.bin, b.source, err = buildGateway(ctx, tmp, o.ref); err != nil {
			return err
		}
	}
	if o.loadGen != "go" {
		b.wrkBin, err = exec.LookPath("wrk")
		if err != nil && o.loadGen == "wrk" {
			return fmt.Errorf("-loadgen wrk: %w", err)
		}
	}
	if o.rows["publish"] || o.rows["fanout"] || o.rows["latency"] || o.rows["rsssub"] || o.rows["rssuser"] {
		if b.centrifugoBin, b.centrifugoVersion, err = findCentrifugo(ctx, o.centrifugo); err != nil {
			b.centrifugoErr = err.Error()
			logf("no Centrifugo: %v", err)
		} else {
			logf("Centrifugo %s: %s", b.centrifugoBin, b.centrifugoVersion)
		}
	}
	var rows []row
	for _, name := range allRows {
		if !o.rows[name] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		t, l0 := time.Now(), loadNow()
		logf("== row %s", name)
		r, err := b.runRow(ctx, name)
		if err != nil {
			r = row{name: name, measure: rowTitle(name, o), gateway: "failed: " + err.Error(), baseline: "—", result: "—", goal: "—", met: "—"}
			logf("row %s failed: %v", name, err)
		}
		r.background = others(l0, loadNow())
		logf("row %s took %s; other processes used %.2f cores meanwhile", name, time.Since(t).Round(100*time.Millisecond), r.background)
		rows = append(rows, r)
	}
	printReport(stdout, b, rows, nofile, time.Since(start))
	b.reportLogs()
	return nil
}

// raiseNoFile raises the soft open-files limit to the hard one; gateway
// subprocesses inherit it.
func raiseNoFile() uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	return lim.Cur
}

// buildGateway builds ./cmd/gateway into dir: from the working tree of
// the module holding the working directory or, with ref, from that git
// revision exported with git archive (the repository is not touched).
// It returns the binary and what it was built from.
func buildGateway(ctx context.Context, dir, ref string) (bin, source string, err error) {
	root, err := gatewayproc.ModuleRoot(ctx)
	if err != nil {
		return "", "", err
	}
	src := root
	source = "./cmd/gateway built from the working tree: " + sourceState(ctx, root)
	if ref != "" {
		rev, err := exec.CommandContext(ctx, "git", "-C", root, "rev-parse", "--short", ref+"^{commit}").Output()
		if err != nil {
			return "", "", fmt.Errorf("-ref %q: not a commit in %s", ref, root)
		}
		src = filepath.Join(dir, "src")
		if err := os.Mkdir(src, 0o755); err != nil {
			return "", "", err
		}
		archive := exec.CommandContext(ctx, "git", "-C", root, "archive", "--format=tar", ref)
		untar := exec.CommandContext(ctx, "tar", "-x", "-C", src)
		if untar.Stdin, err = archive.StdoutPipe(); err != nil {
			return "", "", err
		}
		archive.Stderr, untar.Stderr = os.Stderr, os.Stderr
		if err := untar.Start(); err != nil {
			return "", "", err
		}
		if err := archive.Run(); err != nil {
			return "", "", fmt.Errorf("git archive %s: %w", ref, err)
		}
		if err := untar.Wait(); err != nil {
			return "", "", fmt.Errorf("untar %s: %w", ref, err)
		}
		source = fmt.Sprintf("./cmd/gateway built from commit %s (-ref %s)", strings.TrimSpace(string(rev)), ref)
	}
	t := time.Now()
	if bin, err = gatewayproc.Build(ctx, src, dir); err != nil {
		return "", "", err
	}
	logf("built in %s: %s", time.Since(t).Round(100*time.Millisecond), source)
	return bin, source, nil
}

// sourceState describes the tree the gateway was built from: the commit
// and how many files (besides this tool's) differ from it.
func sourceState(ctx context.Context, root string) string {
	out, err := exec.CommandContext(ctx, "git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown commit"
	}
	s := "commit " + strings.TrimSpace(string(out))
	st, err := exec.CommandContext(ctx, "git", "-C", root, "status", "--porcelain", "--", ":/", ":(exclude,top)cmd/gateway-bench", ":(exclude,top)BENCHMARKS.md").Output()
	if t := strings.TrimSpace(string(st)); err == nil && t != "" {
		s += fmt.Sprintf(" + %d uncommitted or untracked paths", strings.Count(t, "\n")+1)
	}
	return s
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}
