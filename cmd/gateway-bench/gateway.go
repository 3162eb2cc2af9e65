package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/natsgate/natsgate/internal/gatewayproc"
)

// proc is a server subprocess of the bench: a gateway or Centrifugo.
type proc struct {
	kind    string // "gateway", "Centrifugo": how reports name its CPU
	name    string // the row it serves
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error

	mu   sync.Mutex
	logs []string // warnings and errors it logged
}

// gateway is a gateway subprocess with an embedded nats-server.
type gateway struct {
	proc
	addr    string // HTTP host:port
	natsURL string // the embedded server's native listener
	token   string
}

// startGateway runs the gateway binary with the bench's bounds plus extra
// flags, and waits until /readyz answers 200. The ports are picked here
// from :0 listeners closed just before; should one be taken meanwhile, the
// gateway exits and is started again on others.
func (b *bench) startGateway(ctx context.Context, name string, extra ...string) (*gateway, error) {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var g *gateway
		if g, err = b.startGatewayOnce(ctx, name, extra...); err == nil || ctx.Err() != nil {
			return g, err
		}
		logf("gateway %q: %v", name, err)
	}
	return nil, err
}

func (b *bench) startGatewayOnce(ctx context.Context, name string, extra ...string) (*gateway, error) {
	httpPort, err := gatewayproc.FreePort()
	if err != nil {
		return nil, err
	}
	natsPort, err := gatewayproc.FreePort()
	if err != nil {
		return nil, err
	}
	g := &gateway{
		proc:    proc{kind: "gateway", name: name},
		addr:    "127.0.0.1:" + strconv.Itoa(httpPort),
		natsURL: "nats://127.0.0.1:" + strconv.Itoa(natsPort),
		token:   gatewayproc.Token(),
	}
	args := []string{
		"--listen", g.addr,
		"--nats-listen", "127.0.0.1:" + strconv.Itoa(natsPort),
		"--log-level", "warn",
		"--ws-max-sessions-per-token", strconv.Itoa(max(20000, 2*b.o.sessions)),
	}
	if !slices.Contains(extra, "--tokens-file") {
		args = append(args, "--token", g.token)
	}
	args = append(append(args, extra...), b.o.gatewayFlags...)
	if err := b.startProc(&g.proc, b.bin, args...); err != nil {
		return nil, err
	}

	if err := g.waitReady(ctx, "http://"+g.addr+"/readyz"); err != nil {
		return nil, err
	}
	logf("gateway %q pid %d on http://%s, NATS %s %s", name, g.cmd.Process.Pid, g.addr, g.natsURL, strings.Join(extra, " "))
	return g, nil
}

// startProc starts bin with args as p, collecting its log (stderr).
func (b *bench) startProc(p *proc, bin string, args ...string) error {
	p.exited = make(chan struct{})
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = os.Environ()
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		return err
	}
	p.cmd.Stdout = io.Discard
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.kind, err)
	}
	b.procs = append(b.procs, p)
	go p.readLog(stderr, b.o.verbose)
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	return nil
}

// waitReady polls url until it answers 200 (20 s at most); p is stopped
// when it does not.
func (p *proc) waitReady(ctx context.Context, url string) error {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited at start (%v): %s", p.kind, p.waitErr, strings.Join(p.logLines(), " | "))
		case <-ctx.Done():
			p.stop()
			return ctx.Err()
		default:
		}
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			p.stop()
			return fmt.Errorf("%s not ready within 20 s", p.kind)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *proc) readLog(r io.Reader, verbose bool) {
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if verbose {
			fmt.Fprintf(os.Stderr, "[%s %s] %s\n", p.kind, p.name, line)
		}
		p.mu.Lock()
		if len(p.logs) < 200 {
			p.logs = append(p.logs, line)
		}
		p.mu.Unlock()
	}
}

func (p *proc) logLines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.logs...)
}

// stop sends SIGTERM and waits for a graceful exit (SIGKILL after 30 s).
func (p *proc) stop() time.Duration {
	t := time.Now()
	select {
	case <-p.exited:
		return 0
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		logf("%s %q did not exit 30 s after SIGTERM; killing it", p.kind, p.name)
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
	d := time.Since(t)
	logf("%s %q stopped in %s (%v)", p.kind, p.name, d.Round(time.Millisecond), p.waitErr)
	return d
}

// rssKiB reads VmRSS from /proc/<pid>/status.
func (p *proc) rssKiB() (int64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(p.cmd.Process.Pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", p.cmd.Process.Pid)
}

// metrics scrapes the named unlabelled gauges from /metrics.
func (g *gateway) metrics(names ...string) map[string]float64 {
	out := map[string]float64{}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Get("http://" + g.addr + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range bytes.Split(body, []byte("\n")) {
		f := strings.Fields(string(line))
		if len(f) != 2 {
			continue
		}
		for _, n := range names {
			if f[0] == n {
				if v, err := strconv.ParseFloat(f[1], 64); err == nil {
					out[n] = v
				}
			}
		}
	}
	return out
}

// reportLogs prints what the servers logged at warn or above.
func (b *bench) reportLogs() {
	for _, g := range b.procs {
		lines := g.logLines()
		if len(lines) == 0 {
			continue
		}
		logf("%s %q logged %d line(s) at warn level or above:", g.kind, g.name, len(lines))
		for i, l := range lines {
			if i == 20 {
				logf("  …")
				break
			}
			logf("  %s", l)
		}
	}
}

// writeSyscalls counts the process's write syscalls.
func (p *proc) writeSyscalls() int64 { return writeSyscalls(strconv.Itoa(p.cmd.Process.Pid)) }

// writeSyscalls reads syscw from /proc/<pid>/io (0 when unreadable).
func writeSyscalls(pid string) int64 {
	data, err := os.ReadFile("/proc/" + pid + "/io")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "syscw:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}
