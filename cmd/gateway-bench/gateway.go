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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/natsgate/natsgate/internal/gatewayproc"
)

// gateway is a gateway subprocess with an embedded nats-server.
type gateway struct {
	name    string
	cmd     *exec.Cmd
	addr    string // HTTP host:port
	natsURL string // the embedded server's native listener
	token   string
	exited  chan struct{}
	waitErr error

	mu   sync.Mutex
	logs []string // warnings and errors it logged
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
		name:    name,
		addr:    "127.0.0.1:" + strconv.Itoa(httpPort),
		natsURL: "nats://127.0.0.1:" + strconv.Itoa(natsPort),
		token:   gatewayproc.Token(),
		exited:  make(chan struct{}),
	}
	args := []string{
		"--token", g.token,
		"--listen", g.addr,
		"--nats-listen", "127.0.0.1:" + strconv.Itoa(natsPort),
		"--log-level", "warn",
		"--ws-max-sessions-per-token", strconv.Itoa(max(20000, 2*b.o.sessions)),
		"--max-tokens", "1024",
	}
	args = append(args, extra...)
	g.cmd = exec.Command(b.bin, args...)
	g.cmd.Env = os.Environ()
	stderr, err := g.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	g.cmd.Stdout = io.Discard
	if err := g.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start gateway: %w", err)
	}
	b.gateways = append(b.gateways, g)
	go g.readLog(stderr, b.o.verbose)
	go func() {
		g.waitErr = g.cmd.Wait()
		close(g.exited)
	}()

	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-g.exited:
			return nil, fmt.Errorf("gateway exited at start (%v): %s", g.waitErr, strings.Join(g.logLines(), " | "))
		case <-ctx.Done():
			g.stop()
			return nil, ctx.Err()
		default:
		}
		resp, err := client.Get("http://" + g.addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			g.stop()
			return nil, fmt.Errorf("gateway not ready within 20 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	logf("gateway %q pid %d on http://%s, NATS %s %s", name, g.cmd.Process.Pid, g.addr, g.natsURL, strings.Join(extra, " "))
	return g, nil
}

func (g *gateway) readLog(r io.Reader, verbose bool) {
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if verbose {
			fmt.Fprintf(os.Stderr, "[gateway %s] %s\n", g.name, line)
		}
		g.mu.Lock()
		if len(g.logs) < 200 {
			g.logs = append(g.logs, line)
		}
		g.mu.Unlock()
	}
}

func (g *gateway) logLines() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.logs...)
}

// stop sends SIGTERM and waits for a graceful exit (SIGKILL after 30 s).
func (g *gateway) stop() time.Duration {
	t := time.Now()
	select {
	case <-g.exited:
		return 0
	default:
	}
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.exited:
	case <-time.After(30 * time.Second):
		logf("gateway %q did not exit 30 s after SIGTERM; killing it", g.name)
		_ = g.cmd.Process.Kill()
		<-g.exited
	}
	d := time.Since(t)
	logf("gateway %q stopped in %s (%v)", g.name, d.Round(time.Millisecond), g.waitErr)
	return d
}

// rssKiB reads VmRSS from /proc/<pid>/status.
func (g *gateway) rssKiB() (int64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(g.cmd.Process.Pid) + "/status")
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
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", g.cmd.Process.Pid)
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

// reportGatewayLogs prints what the gateways logged at warn or above.
func (b *bench) reportGatewayLogs() {
	for _, g := range b.gateways {
		lines := g.logLines()
		if len(lines) == 0 {
			continue
		}
		logf("gateway %q logged %d line(s) at warn level or above:", g.name, len(lines))
		for i, l := range lines {
			if i == 20 {
				logf("  …")
				break
			}
			logf("  %s", l)
		}
	}
}

// writeSyscalls counts the gateway's write syscalls.
func (g *gateway) writeSyscalls() int64 { return writeSyscalls(strconv.Itoa(g.cmd.Process.Pid)) }

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
