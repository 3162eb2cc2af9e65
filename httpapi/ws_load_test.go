package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// rawSession opens a session with the Authorization header and reads its
// connected frame; the caller decides whether to read further.
func (g *gateway) rawSession(t testing.TB) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(g.URL, "http")+"/v1/ws",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + adminToken}}})
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadLimit(-1)
	if _, b, err := c.Read(context.Background()); err != nil || !strings.Contains(string(b), `"connected"`) {
		t.Fatalf("connected frame: %s %v", b, err)
	}
	return c
}

func readUntil(t testing.TB, c *websocket.Conn, want string) {
	t.Helper()
	for {
		_, b, err := c.Read(context.Background())
		if err != nil {
			t.Fatalf("waiting for %s: %v", want, err)
		}
		if strings.Contains(string(b), want) {
			return
		}
	}
}

// TestThousandsOfSessionsComeAndGoWithoutLeaks opens sessions with
// subscriptions in waves and ends them every way a session ends: client
// close, abrupt disconnect, protocol error, server shutdown. Afterwards no
// session goroutine and no NATS subscription is left.
func TestThousandsOfSessionsComeAndGoWithoutLeaks(t *testing.T) {
	if testing.Short() {
		t.Skip("opens thousands of sessions")
	}
	g := startGateway(t, func(o *gatewayOptions) { o.cfg.KeepAlive = 20 * time.Millisecond })
	// Warm up: the token's NATS connection and the pinger exist from the
	// first session on, and stay.
	warm := g.rawSession(t)
	warm.Close(websocket.StatusNormalClosure, "")
	time.Sleep(50 * time.Millisecond)
	baseGoroutines := runtime.NumGoroutine()
	baseSubs := g.serverSubs()
	const waves, perWave = 4, 500
	for wave := range waves {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 32)
		for i := range perWave {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				c := g.rawSession(t)
				subject := fmt.Sprintf("leak.%d.%d", wave, i%50) // shared and unshared subscriptions
				c.Write(context.Background(), websocket.MessageText, []byte(`{"op":"sub","sid":"s","subject":"`+subject+`"}`))
				readUntil(t, c, `"op":"ok"`)
				switch i % 3 {
				case 0:
					c.Close(websocket.StatusNormalClosure, "")
				case 1:
					c.CloseNow()
				case 2:
					c.Write(context.Background(), websocket.MessageText, []byte(`not json`))
					if _, _, err := c.Read(context.Background()); websocket.CloseStatus(err) != 4400 {
						t.Errorf("malformed frame: %v", err)
					}
					c.CloseNow()
				}
			})
		}
		wg.Wait()
	}
	deadline := time.Now().Add(10 * time.Second)
	for g.serverSubs() != baseSubs || runtime.NumGoroutine() > baseGoroutines {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("after the sessions ended: goroutines %d (base %d), server subscriptions %d (base %d)\n%s",
				runtime.NumGoroutine(), baseGoroutines, g.serverSubs(), baseSubs, buf[:min(len(buf), 8000)])
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := g.pool.Stats().InUse; got != 0 {
		t.Fatalf("%d NATS connections still referenced", got)
	}
	if got := metricValue(t, g, `natsgate_open_streams{transport="ws"}`); got != 0 {
		t.Fatalf("metrics count %v open sessions", got)
	}
	if got := metricValue(t, g, "natsgate_subscriptions"); got != 0 {
		t.Fatalf("metrics count %v subscriptions", got)
	}
	t.Logf("%d sessions came and went; goroutines %d → %d, server subscriptions %d → %d",
		waves*perWave, baseGoroutines, runtime.NumGoroutine(), baseSubs, g.serverSubs())
}

// rss is this process's resident set size in bytes.
func rss(t testing.TB) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status")
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Skip("no VmRSS")
	return 0
}

// TestFloodToAStalledClientStaysBounded publishes 200,000 × 1 KiB (195 MiB)
// to a session that never reads. The gateway drops past the session's
// queue bound instead of buffering: this process's memory grows by a small
// fraction of the flood, and the client, once it reads again, is told how
// many messages it lost.
func TestFloodToAStalledClientStaysBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("publishes 195 MiB")
	}
	g := startGateway(t, func(o *gatewayOptions) {
		o.cfg.QueueBytes = 1 << 20
		o.cfg.SlowConsumerGrace = time.Hour // keep the stalled client to inspect it
		o.cfg.WriteTimeout = time.Minute
		// A client that reads nothing answers no pings either: on a slow
		// machine the flood outlasts a keep-alive interval, and the
		// gateway would close it as dead before it reads again.
		o.cfg.KeepAlive = time.Hour
	})
	c := g.rawSession(t)
	defer c.CloseNow()
	c.Write(context.Background(), websocket.MessageText, []byte(`{"op":"sub","sid":"f","subject":"flood"}`))
	readUntil(t, c, `"op":"ok"`)

	runtime.GC()
	before := rss(t)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heapBefore, heapPeak := ms.HeapInuse, ms.HeapInuse
	nc := g.native(adminToken)
	payload := make([]byte, 1024)
	const n = 200_000
	// The publisher keeps at most lead messages ahead of what the gateway
	// has taken from NATS (dropped or queued): otherwise, on a loaded
	// machine, nats-server (in this same process) would buffer the
	// backlog for the gateway's connection, and its memory, not the
	// gateway's, would be what grows.
	const lead = 20_000
	dropped := func() float64 { return metricValue(t, g, `natsgate_messages_dropped_total{transport="ws"}`) }
	for i := range n {
		if err := nc.Publish("flood", payload); err != nil {
			t.Fatal(err)
		}
		if i%1000 == 999 {
			nc.Flush()
			if i >= lead {
				waitFor(t, "the gateway to keep up with the flood", func() bool { return dropped() > float64(i-lead) })
			}
		}
	}
	nc.Flush()
	var peak int64
	waitFor(t, "the flood to pass through the gateway", func() bool {
		peak = max(peak, rss(t))
		runtime.ReadMemStats(&ms)
		heapPeak = max(heapPeak, ms.HeapInuse)
		return g.pool.Stats().Conns > 0 && dropped() > n/2
	})
	time.Sleep(200 * time.Millisecond)
	peak = max(peak, rss(t))
	growth := peak - before
	t.Logf("flood of %d MiB: RSS %d MiB → peak %d MiB (growth %d MiB), Go heap growth %d MiB; dropped %.0f",
		n>>10, before>>20, peak>>20, growth>>20, (heapPeak-heapBefore)>>20, metricValue(t, g, `natsgate_messages_dropped_total{transport="ws"}`))
	// The in-process publisher and nats-server pass 195 MiB through their
	// own buffers; the gateway's share is its 1 MiB queue and socket
	// buffers. Under the race detector RSS includes its shadow memory, so
	// the Go heap is what is checked there.
	if heap := heapPeak - heapBefore; heap > 64<<20 {
		t.Fatalf("the Go heap grew by %d MiB for a stalled client", heap>>20)
	}
	if growth > 64<<20 && !raceEnabled {
		t.Fatalf("RSS grew by %d MiB for a stalled client", growth>>20)
	}
	// Reading again, the client gets what was queued and then the count.
	for {
		_, b, err := c.Read(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), `"status":429`) {
			if !strings.Contains(string(b), "dropped") {
				t.Fatalf("notice %s", b)
			}
			t.Logf("client told: %s", b)
			break
		}
	}
}

// metricValue scrapes /metrics and returns one sample's value.
func metricValue(t testing.TB, g *gateway, series string) float64 {
	t.Helper()
	resp, body := g.do("GET", "/metrics", "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	for _, l := range strings.Split(string(body), "\n") {
		if rest, ok := strings.CutPrefix(l, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("%s: %v", l, err)
			}
			return v
		}
	}
	return 0
}
