package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natsgate/natsgate/bridge"
)

// TestNATSOutageIsSurvived stops the NATS server behind the gateway (as
// with --nats-url) and starts it again on the same address: while it is
// gone, /readyz is 503 and publishes and requests answer 503 with
// Retry-After promptly; open SSE streams and WebSocket sessions stay open
// and are told; when it is back, every subscription is live again by
// itself and each message arrives exactly once.
func TestNATSOutageIsSurvived(t *testing.T) {
	t.Parallel()
	g := startGateway(t, func(o *gatewayOptions) {
		o.external = true
		o.pool.ReconnectWait = 50 * time.Millisecond
	})
	addr := strings.TrimPrefix(g.e.ClientURL(), "nats://")
	sse := g.stream("/v1/subscribe/out.>", adminToken, "")
	sse.next(t, func(l string) bool { return l == ": subscribed" })
	w := g.dialWS(adminToken)
	w.next("connected")
	w.send(map[string]any{"op": "sub", "sid": "s", "subject": "out.>"})
	w.next("ok")

	_ = g.e.Shutdown(context.Background())
	sse.next(t, func(l string) bool { return strings.Contains(l, `"nats":"disconnected"`) })
	if f := w.next("status"); f["nats"] != "disconnected" {
		t.Fatalf("status %v", f)
	}
	resp, body := g.do("GET", "/readyz", "", nil)
	wantProblem(t, resp, body, 503, "")
	for _, path := range []string{"/v1/publish/out.x", "/v1/request/out.x"} {
		start := time.Now()
		resp, body := g.do("POST", path, adminToken, strings.NewReader("lost?"))
		wantProblem(t, resp, body, 503, "")
		if resp.Header.Get("Retry-After") == "" || time.Since(start) > 2*time.Second {
			t.Fatalf("%s: Retry-After %q after %v", path, resp.Header.Get("Retry-After"), time.Since(start))
		}
	}
	w.send(map[string]any{"op": "pub", "subject": "out.ws", "id": "p"})
	if f := w.next("error"); f["status"].(float64) != 503 {
		t.Fatalf("pub while down: %v", f)
	}

	e2, err := bridge.StartEmbedded(bridge.EmbeddedConfig{Listen: addr, Tokens: testTokens()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e2.Shutdown(context.Background()) })
	sse.next(t, func(l string) bool { return strings.Contains(l, `"nats":"reconnected"`) })
	if f := w.next("status"); f["nats"] != "reconnected" {
		t.Fatalf("status %v", f)
	}
	waitFor(t, "readyz", func() bool { r, _ := g.do("GET", "/readyz", "", nil); return r.StatusCode == 200 })

	// Subscriptions are live again, once each: no duplicates.
	for i := range 5 {
		if r, b := g.do("POST", fmt.Sprintf("/v1/publish/out.%d", i), adminToken, strings.NewReader("back")); r.StatusCode != 204 {
			t.Fatalf("publish after the outage: %d %s", r.StatusCode, b)
		}
	}
	for i := range 5 {
		want := fmt.Sprintf(`"subject":"out.%d"`, i)
		if l := sse.next(t, isData); !strings.Contains(l, want) {
			t.Fatalf("SSE got %s, want %s", l, want)
		}
		if f := w.next("msg"); f["subject"] != fmt.Sprintf("out.%d", i) {
			t.Fatalf("WebSocket got %v, want out.%d", f, i)
		}
	}
	g.do("POST", "/v1/publish/out.end", adminToken, nil)
	if l := sse.next(t, isData); !strings.Contains(l, "out.end") {
		t.Fatalf("duplicate or stray message on SSE: %s", l)
	}
	if f := w.next("msg"); f["subject"] != "out.end" {
		t.Fatalf("duplicate or stray message on WebSocket: %v", f)
	}
}

// TestShutdownLetsInFlightPublishesFinish publishes from many clients while
// the gateway shuts down: every request is answered, each 204 means the
// message reached the subscriber, and the rest are 503s.
func TestShutdownLetsInFlightPublishesFinish(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	sub := g.nativeSub("drain")
	var (
		ok, refused atomic.Int64
		wg          sync.WaitGroup
		stop        = make(chan struct{})
	)
	client := &http.Client{Timeout: 10 * time.Second}
	for range 16 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				req, _ := http.NewRequest("POST", g.URL+"/v1/publish/drain", strings.NewReader("m"))
				req.Header.Set("Authorization", "Bearer "+adminToken)
				resp, err := client.Do(req)
				if err != nil {
					refused.Add(1) // connection closed by the shutdown
					continue
				}
				resp.Body.Close()
				switch resp.StatusCode {
				case 204:
					ok.Add(1)
				case 503:
					refused.Add(1)
				default:
					t.Errorf("status %d during shutdown", resp.StatusCode)
				}
			}
		})
	}
	time.Sleep(100 * time.Millisecond)
	g.api.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.ts.Config.Shutdown(ctx); err != nil {
		t.Fatalf("http shutdown: %v", err)
	}
	close(stop)
	wg.Wait()
	// Every 204 reached the subscriber.
	for i := range ok.Load() {
		if _, err := sub.NextMsg(2 * time.Second); err != nil {
			t.Fatalf("204 number %d never reached the subscriber: %v", i+1, err)
		}
	}
	if ok.Load() == 0 || refused.Load() == 0 {
		t.Fatalf("%d succeeded, %d refused: the test did not overlap the shutdown", ok.Load(), refused.Load())
	}
	t.Logf("%d publishes confirmed before the shutdown, %d refused after it", ok.Load(), refused.Load())
}
