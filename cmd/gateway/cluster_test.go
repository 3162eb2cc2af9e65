package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/natsgate/natsgate/internal/gatewayproc"
)

// The cluster tests run the real gateway binary, several at once, on
// loopback: three gateways each embedding one node of a NATS cluster, then
// stateless gateways in front of a cluster run in the test process.

const clusterToken = "cluster-secret"

// TestCluster builds the binary once and runs both scenarios.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs gateway processes; skipped with -short")
	}
	bin := clBuildGateway(t)
	t.Run("EmbeddedNodes", func(t *testing.T) { testClusterEmbeddedNodes(t, bin) })
	t.Run("StatelessGateways", func(t *testing.T) { testClusterStatelessGateways(t, bin) })
}

// testClusterEmbeddedNodes: three gateways, each embedding one node of a
// three-node cluster. A publish on one reaches SSE and WebSocket clients on
// the others, and keeps doing so after one gateway is killed.
func testClusterEmbeddedNodes(t *testing.T, bin string) {
	dir := t.TempDir()
	client := [3]int{clFreePort(t), clFreePort(t), clFreePort(t)}
	route := [3]int{clFreePort(t), clFreePort(t), clFreePort(t)}
	var gws [3]*clGateway
	for i := range 3 {
		var routes []string
		for j := range 3 {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", route[j]))
			}
		}
		conf := filepath.Join(dir, fmt.Sprintf("node%d.conf", i+1))
		body := fmt.Sprintf("listen: 127.0.0.1:%d\nserver_name: node%d\ncluster {\n  name: natsgate-test\n  listen: 127.0.0.1:%d\n  routes: [%s]\n}\n",
			client[i], i+1, route[i], strings.Join(routes, ", "))
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		gws[i] = clStartGateway(t, bin, fmt.Sprintf("gw%d", i+1), "--nats-config", conf)
	}
	var urls [3]string
	for i := range urls {
		urls[i] = fmt.Sprintf("nats://127.0.0.1:%d", client[i])
	}
	clWaitMesh(t, urls[:])

	// An SSE stream on gateway 2 and a WebSocket session on gateway 3.
	sse := clOpenSSE(t, gws[1], "orders.>")
	ws := clOpenWS(t, gws[2])
	ws.subscribe(t, "s", "orders.>")

	// A publish on gateway 1 reaches both (once the subscriptions' interest
	// has crossed the routes).
	clPublishUntilSeen(t, gws[0], "orders.eu", "before-kill", sse, ws)

	// SIGKILL gateway 1: its node goes with it; 2 and 3 go on.
	if err := gws[0].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-gws[0].exited
	for _, g := range gws[1:] {
		clWaitFor(t, 5*time.Second, g.name+" ready after gw1 was killed", func() bool { return g.get("/readyz") == http.StatusOK })
	}
	if code := gws[1].publish(t, "orders.us", "after-kill"); code != http.StatusNoContent {
		t.Fatalf("publish on gw2 after gw1 was killed: %d", code)
	}
	sse.waitData(t, "after-kill", 5*time.Second)
	ws.waitData(t, "after-kill", 5*time.Second)
	if n := sse.count("after-kill") + ws.count("after-kill"); n != 2 {
		t.Fatalf("after-kill delivered %d times in all, want once to each client", n)
	}

	// SIGTERM gateway 3 (the WebSocket session's): close 1001, exit 0.
	gws[2].terminate(t, 5*time.Second)
	ws.waitClosed(t, websocket.StatusGoingAway, 5*time.Second)
	// Gateway 2 still serves its stream.
	if code := gws[1].publish(t, "orders.eu", "after-term"); code != http.StatusNoContent {
		t.Fatalf("publish on gw2 after gw3 stopped: %d", code)
	}
	sse.waitData(t, "after-term", 5*time.Second)
}

// testClusterStatelessGateways: a three-node cluster in the test process
// and two gateways with the whole URL list. The node gateway B is
// connected to shuts down; B reconnects to another and its SSE and
// WebSocket clients go on receiving what gateway A publishes. Then B is
// stopped with SIGTERM.
func testClusterStatelessGateways(t *testing.T, bin string) {
	nodes := clStartCluster(t, 3)
	var list []string
	for _, s := range nodes {
		list = append(list, s.ClientURL())
	}
	urls := strings.Join(list, ",")
	gwA := clStartGateway(t, bin, "gwA", "--nats-url", urls, "--nats-listen", "off")
	gwB := clStartGateway(t, bin, "gwB", "--nats-url", urls, "--nats-listen", "off")
	clWaitMesh(t, list)

	sse := clOpenSSE(t, gwB, "events.>")
	ws := clOpenWS(t, gwB)
	ws.subscribe(t, "s", "events.>")
	clPublishUntilSeen(t, gwA, "events.a", "before-outage", sse, ws)

	// B's connection is the gateway connection holding subscriptions.
	var victim *server.Server
	clWaitFor(t, 5*time.Second, "gateway B's NATS connection", func() bool {
		for _, s := range nodes {
			cz, err := s.Connz(&server.ConnzOptions{})
			if err != nil {
				continue
			}
			for _, c := range cz.Conns {
				if c.Name == "natsgate" && c.NumSubs > 0 {
					victim = s
					return true
				}
			}
		}
		return false
	})
	t.Logf("shutting down %s, which gateway B is connected to", victim.Name())
	victim.Shutdown()
	victim.WaitForShutdown()

	sse.waitStatus(t, "reconnected", 10*time.Second)
	ws.waitStatus(t, "reconnected", 10*time.Second)
	for _, r := range []*clReceiver{sse, ws} {
		if st := r.statuses(); len(st) < 2 || st[0] != "disconnected" {
			t.Fatalf("%s status notices = %v, want disconnected then reconnected", r.name, st)
		}
	}
	t.Logf("status notices: SSE %v, WebSocket %v", sse.statuses(), ws.statuses())
	clPublishUntilSeen(t, gwA, "events.b", "after-outage", sse, ws)

	// SIGTERM gateway B: the session closes with 1001, the stream ends, the
	// process exits 0 within its --shutdown-timeout.
	gwB.terminate(t, 5*time.Second)
	ws.waitClosed(t, websocket.StatusGoingAway, 5*time.Second)
	sse.waitEnded(t, 5*time.Second)
	if st := sse.statuses(); st[len(st)-1] != "gateway shutting down" {
		t.Errorf("SSE stream's last status = %v, want the shutdown notice", st)
	}
}

// clBuildGateway builds the gateway into a temporary directory.
func clBuildGateway(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	root, err := gatewayproc.ModuleRoot(ctx)
	if err == nil {
		var bin string
		if bin, err = gatewayproc.Build(ctx, root, t.TempDir()); err == nil {
			return bin
		}
	}
	t.Fatal(err)
	return ""
}

// clFreePort returns a loopback port that was free a moment ago.
func clFreePort(t *testing.T) int {
	t.Helper()
	port, err := gatewayproc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// clGateway is a gateway process.
type clGateway struct {
	name    string
	base    string
	cmd     *exec.Cmd
	stderr  *gatewayproc.LogBuffer
	exited  chan struct{}
	waitErr error // set before exited closes
}

// clStartGateway starts the binary with the shared token and waits for
// it to log its address. Cleanup kills it; on failure its log is shown.
func clStartGateway(t *testing.T, bin, name string, args ...string) *clGateway {
	t.Helper()
	args = append([]string{"--listen", "127.0.0.1:0", "--token", clusterToken, "--shutdown-timeout", "5s"}, args...)
	g := &clGateway{name: name, cmd: exec.Command(bin, args...), stderr: &gatewayproc.LogBuffer{}, exited: make(chan struct{})}
	g.cmd.Stdout = g.stderr
	g.cmd.Stderr = g.stderr
	g.cmd.Env = append(os.Environ(), "GATEWAY_LOG_FORMAT=text") // the rest comes from the flags
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		g.waitErr = g.cmd.Wait()
		close(g.exited)
	}()
	t.Cleanup(func() {
		_ = g.cmd.Process.Kill()
		<-g.exited
		if t.Failed() {
			t.Logf("--- %s (%s) log:\n%s", name, strings.Join(args, " "), g.stderr)
		}
	})
	deadline := time.After(15 * time.Second)
	for {
		if addr, ok := gatewayproc.ListenAddr(g.stderr.String()); ok {
			g.base = "http://" + addr
			return g
		}
		select {
		case <-g.exited:
			t.Fatalf("%s exited early: %v", name, g.waitErr)
		case <-deadline:
			t.Fatalf("%s did not log its address within 15s", name)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (g *clGateway) get(path string) int {
	resp, err := http.Get(g.base + path)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// publish POSTs /v1/publish/{subject} and returns the status (0 when the
// request itself failed).
func (g *clGateway) publish(t *testing.T, subject, data string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", g.base+"/v1/publish/"+subject, strings.NewReader(data))
	req.Header.Set("Authorization", "Bearer "+clusterToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Logf("publish on %s: %v", g.name, err)
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// terminate sends SIGTERM and requires exit status 0 within limit.
func (g *clGateway) terminate(t *testing.T, limit time.Duration) {
	t.Helper()
	start := time.Now()
	if err := g.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.exited:
		if g.waitErr != nil {
			t.Fatalf("%s exited after SIGTERM with %v, want status 0", g.name, g.waitErr)
		}
		t.Logf("%s exited 0 %v after SIGTERM", g.name, time.Since(start).Round(time.Millisecond))
	case <-time.After(limit):
		t.Fatalf("%s still running %v after SIGTERM (--shutdown-timeout %v)", g.name, limit, limit)
	}
}

// clStartCluster runs an n-node token-authenticated cluster in the test
// process.
func clStartCluster(t *testing.T, n int) []*server.Server {
	t.Helper()
	ports := make([]int, n)
	cports := make([]int, n)
	for i := range n {
		ports[i], cports[i] = clFreePort(t), clFreePort(t)
	}
	nodes := make([]*server.Server, n)
	for i := range n {
		var routes []string
		for j := range n {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", cports[j]))
			}
		}
		s, err := server.NewServer(&server.Options{
			ServerName:    "node" + strconv.Itoa(i+1),
			Host:          "127.0.0.1",
			Port:          ports[i],
			Cluster:       server.ClusterOpts{Name: "natsgate-test", Host: "127.0.0.1", Port: cports[i]},
			Routes:        server.RoutesFromStr(strings.Join(routes, ",")),
			Authorization: clusterToken,
			NoSigs:        true,
			NoLog:         true,
		})
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		t.Cleanup(func() {
			s.Shutdown()
			s.WaitForShutdown()
		})
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("node %d not ready", i+1)
		}
		nodes[i] = s
	}
	return nodes
}

// clWaitMesh waits until a message published on any node reaches a
// subscriber on every other node.
func clWaitMesh(t *testing.T, urls []string) {
	t.Helper()
	conns := make([]*nats.Conn, len(urls))
	subs := make([]*nats.Subscription, len(urls))
	for i, u := range urls {
		nc, err := nats.Connect(u, nats.Token(clusterToken), nats.Name("mesh-probe"), nats.DontRandomize(), nats.MaxReconnects(0))
		if err != nil {
			t.Fatalf("native client on %s: %v", u, err)
		}
		defer nc.Close()
		conns[i] = nc
		if subs[i], err = nc.SubscribeSync("mesh.>"); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for attempt := 0; ; attempt++ {
		if time.Now().After(deadline) {
			t.Fatalf("the cluster did not form within 20s")
		}
		for i, nc := range conns {
			nc.Publish(fmt.Sprintf("mesh.%d.%d", i, attempt), nil)
			nc.Flush()
		}
		time.Sleep(100 * time.Millisecond)
		complete := true
		for _, sub := range subs {
			seen := map[string]bool{}
			for {
				m, err := sub.NextMsg(time.Millisecond)
				if err != nil {
					break
				}
				seen[m.Subject] = true
			}
			for i := range conns {
				if !seen[fmt.Sprintf("mesh.%d.%d", i, attempt)] {
					complete = false
				}
			}
		}
		if complete {
			return
		}
	}
}

// clReceiver is an SSE stream or WebSocket session: what it received, its
// status notices, and how it ended.
type clReceiver struct {
	name   string
	mu     sync.Mutex
	got    map[string]int
	status []string
	oks    map[string]bool
	ended  chan struct{}
	endErr error // set before ended closes
	ws     *websocket.Conn
}

func clNewReceiver(name string) *clReceiver {
	return &clReceiver{name: name, got: map[string]int{}, oks: map[string]bool{}, ended: make(chan struct{})}
}

func (r *clReceiver) count(data string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.got[data]
}

func (r *clReceiver) statuses() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.status...)
}

func (r *clReceiver) hasStatus(s string) bool {
	for _, v := range r.statuses() {
		if v == s {
			return true
		}
	}
	return false
}

// record handles one message object or notice ({"op":...}).
func (r *clReceiver) record(line []byte) {
	var f struct {
		Op      string `json:"op"`
		Sid     string `json:"sid"`
		Data    string `json:"data"`
		Nats    string `json:"nats"`
		Gateway string `json:"gateway"`
	}
	if err := json.Unmarshal(line, &f); err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch f.Op {
	case "", "msg":
		r.got[f.Data]++
	case "status":
		if f.Gateway != "" {
			r.status = append(r.status, "gateway "+f.Gateway)
		} else {
			r.status = append(r.status, f.Nats)
		}
	case "ok":
		r.oks[f.Sid] = true
	}
}

func (r *clReceiver) waitData(t *testing.T, data string, timeout time.Duration) {
	t.Helper()
	clWaitFor(t, timeout, fmt.Sprintf("%s to receive %q", r.name, data), func() bool { return r.count(data) > 0 })
}

func (r *clReceiver) waitStatus(t *testing.T, status string, timeout time.Duration) {
	t.Helper()
	clWaitFor(t, timeout, fmt.Sprintf("%s to get status %q", r.name, status), func() bool { return r.hasStatus(status) })
}

func (r *clReceiver) waitEnded(t *testing.T, timeout time.Duration) {
	t.Helper()
	select {
	case <-r.ended:
	case <-time.After(timeout):
		t.Fatalf("%s did not end within %v", r.name, timeout)
	}
}

func (r *clReceiver) waitClosed(t *testing.T, want websocket.StatusCode, timeout time.Duration) {
	t.Helper()
	r.waitEnded(t, timeout)
	if got := websocket.CloseStatus(r.endErr); got != want {
		t.Fatalf("%s closed with %v (%v), want %v", r.name, got, r.endErr, want)
	}
}

// clOpenSSE opens GET /v1/subscribe/{subject} and waits for ": subscribed".
func clOpenSSE(t *testing.T, g *clGateway, subject string) *clReceiver {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", g.base+"/v1/subscribe/"+subject, nil)
	req.Header.Set("Authorization", "Bearer "+clusterToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("subscribe on %s: %v", g.name, err)
	}
	if resp.StatusCode != http.StatusOK {
		cancel()
		t.Fatalf("subscribe on %s: %s", g.name, resp.Status)
	}
	r := clNewReceiver("SSE on " + g.name)
	subscribed := make(chan struct{})
	go func() {
		defer close(r.ended)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		first := true
		for sc.Scan() {
			line := sc.Text()
			if line == ": subscribed" && first {
				first = false
				close(subscribed)
			}
			if data, ok := strings.CutPrefix(line, "data: "); ok {
				r.record([]byte(data)) // status events carry an "op"
			}
		}
		r.endErr = sc.Err()
	}()
	t.Cleanup(cancel)
	select {
	case <-subscribed:
	case <-r.ended:
		t.Fatalf("%s ended before it was subscribed", r.name)
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: no \": subscribed\" within 5s", r.name)
	}
	return r
}

// clOpenWS opens a session with the token in the Authorization header and
// waits for its "connected" frame.
func clOpenWS(t *testing.T, g *clGateway) *clReceiver {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h := http.Header{}
	h.Set("Authorization", "Bearer "+clusterToken)
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(g.base, "http")+"/v1/ws", &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		t.Fatalf("ws dial %s: %v", g.name, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	r := clNewReceiver("WebSocket on " + g.name)
	r.ws = c
	connected := make(chan struct{})
	go func() {
		defer close(r.ended)
		first := true
		for {
			_, data, err := c.Read(context.Background())
			if err != nil {
				r.endErr = err
				return
			}
			if first && bytes.Contains(data, []byte(`"op":"connected"`)) {
				first = false
				close(connected)
			}
			r.record(data)
		}
	}()
	select {
	case <-connected:
	case <-r.ended:
		t.Fatalf("%s ended before \"connected\": %v", r.name, r.endErr)
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: no \"connected\" frame within 5s", r.name)
	}
	return r
}

// subscribe sends a sub op and waits for its ok.
func (r *clReceiver) subscribe(t *testing.T, sid, subject string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, _ := json.Marshal(map[string]string{"op": "sub", "sid": sid, "subject": subject})
	if err := r.ws.Write(ctx, websocket.MessageText, b); err != nil {
		t.Fatalf("%s: write: %v", r.name, err)
	}
	clWaitFor(t, 5*time.Second, fmt.Sprintf("%s: ok for sub %s", r.name, sid), func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.oks[sid]
	})
}

// clPublishUntilSeen publishes numbered probes on g until every receiver has
// one (subscription interest crosses cluster routes asynchronously, and a
// reconnected gateway resubscribes), then publishes data once and requires
// each receiver to get it exactly once.
func clPublishUntilSeen(t *testing.T, g *clGateway, subject, data string, rs ...*clReceiver) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for i := 0; ; i++ {
		probe := fmt.Sprintf("%s-probe-%d", data, i)
		code := g.publish(t, subject, probe)
		if code == http.StatusNoContent {
			all := true
			for _, r := range rs {
				ok := false
				for end := time.Now().Add(300 * time.Millisecond); !ok && time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
					ok = r.count(probe) > 0
				}
				all = all && ok
			}
			if all {
				break
			}
		} else {
			time.Sleep(200 * time.Millisecond)
		}
		if time.Now().After(deadline) {
			t.Fatalf("probes published on %s (last status %d) did not reach every client within 15s", g.name, code)
		}
	}
	if code := g.publish(t, subject, data); code != http.StatusNoContent {
		t.Fatalf("publish %q on %s: %d", data, g.name, code)
	}
	for _, r := range rs {
		r.waitData(t, data, 5*time.Second)
	}
	time.Sleep(100 * time.Millisecond)
	for _, r := range rs {
		if n := r.count(data); n != 1 {
			t.Fatalf("%s received %q %d times", r.name, data, n)
		}
	}
}

// clWaitFor polls cond until it holds or timeout passes.
func clWaitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
