package httpapi

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/natsgate/natsgate/bridge"
)

// memUsers is how many idle subscribed users BenchmarkIdleUserMemory
// opens per iteration: enough that per-process costs vanish in the
// average, few enough to open in seconds.
const memUsers = 2000

// BenchmarkIdleUserMemory reports what one idle subscribed WebSocket user
// costs the gateway, with the embedded server in the same process reached
// in-process, as the gateway runs by default:
//
//   - own-token: every user has a token of their own, hence a NATS
//     connection of their own (what OIDC users are);
//   - shared-token: every user presents the same token, each subscribed to
//     a subject of their own (a NATS subscription each, no sharing);
//   - shared-token-one-subject: the same token, all on one subject, which
//     the sessions share one NATS subscription of.
//
// B/user is the growth of the Go heap (live objects, after a GC) plus
// goroutine stacks (stack-B/user of it); rss-B/user is this process's
// resident set growth, noisier: it counts only pages touched, and garbage
// not yet collected. The clients are raw sockets that
// did the WebSocket handshake by hand, so they add little (a net.Conn
// each, included).
func BenchmarkIdleUserMemory(b *testing.B) {
	for _, bc := range []struct {
		name       string
		own        bool // a token each, else adminToken for all
		oneSubject bool // all on one subject (one NATS subscription), else a subject each
	}{
		{"shared-token", false, false},
		{"shared-token-one-subject", false, true},
		{"own-token", true, false},
	} {
		own := bc.own
		b.Run(bc.name, func(b *testing.B) {
			tokens := testTokens()
			if own {
				for i := range memUsers {
					tokens = append(tokens, bridge.Token{Name: fmt.Sprintf("user-%d", i), Token: fmt.Sprintf("user-Tok3n-%d", i)})
				}
			}
			g := startGateway(b, func(o *gatewayOptions) {
				o.tokens = tokens
				o.pool.MaxTokens = memUsers + 16
				o.pool.IdleTimeout = 100 * time.Millisecond
				o.cfg.AuthFailureLimit = -1
				o.cfg.KeepAlive = time.Hour // no pings to answer while idle
			})
			addr := strings.TrimPrefix(g.URL, "http://")
			token := func(i int) string {
				if own {
					return fmt.Sprintf("user-Tok3n-%d", i)
				}
				return adminToken
			}
			// Warm up: the shared token's connection, the session code.
			warm := idleUser(b, addr, adminToken, "mem.warm")
			defer warm.Close()
			for i := 0; i < b.N; i++ {
				heap0, stack0 := heapStack()
				rss0, gr0 := rss(b), runtime.NumGoroutine()
				conns := make([]net.Conn, memUsers)
				var wg sync.WaitGroup
				sem := make(chan struct{}, 16)
				for u := range memUsers {
					sem <- struct{}{}
					wg.Go(func() {
						defer func() { <-sem }()
						subject := fmt.Sprintf("mem.%d", u)
						if bc.oneSubject {
							subject = "mem.all"
						}
						conns[u] = idleUser(b, addr, token(u), subject)
					})
				}
				wg.Wait()
				heap1, stack1 := heapStack()
				rss1, gr1 := rss(b), runtime.NumGoroutine()
				b.ReportMetric(float64(heap1+stack1-heap0-stack0)/memUsers, "B/user")
				b.ReportMetric(float64(stack1-stack0)/memUsers, "stack-B/user")
				b.ReportMetric(float64(rss1-rss0)/memUsers, "rss-B/user")
				b.ReportMetric(float64(gr1-gr0)/memUsers, "goroutines/user")
				for _, c := range conns {
					c.Close()
				}
				// Sessions end, and then (IdleTimeout) their connections.
				waitFor(b, "the sessions to end", func() bool { return runtime.NumGoroutine() <= gr0 })
			}
		})
	}
}

// heapStack is the Go heap's live bytes and the goroutine stacks' bytes,
// after a collection.
func heapStack() (heap, stack int64) {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc), int64(m.StackInuse)
}

// idleUser opens a WebSocket session on a raw TCP connection, subscribes
// it to subject and returns the connection once the subscription is
// confirmed; nothing reads it afterwards.
func idleUser(b *testing.B, addr, token, subject string) net.Conn {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	fmt.Fprintf(c, "GET /v1/ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n", addr, token)
	r := bufio.NewReaderSize(c, 512)
	resp, err := http.ReadResponse(r, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		b.Fatalf("upgrade: %v %v", resp, err)
	}
	payload := fmt.Appendf(nil, `{"op":"sub","sid":"s","subject":%q}`, subject)
	// A masked text frame (the mask is zero: the payload goes as is).
	frame := append([]byte{0x81, 0x80 | byte(len(payload)), 0, 0, 0, 0}, payload...)
	if _, err := c.Write(frame); err != nil {
		b.Fatal(err)
	}
	var seen []byte
	buf := make([]byte, 512)
	for !bytes.Contains(seen, []byte(`"op":"ok"`)) {
		if bytes.Contains(seen, []byte(`"op":"error"`)) {
			b.Fatalf("sub: %s", seen)
		}
		n, err := r.Read(buf)
		if err != nil {
			b.Fatalf("waiting for the sub's ok: %v (%s)", err, seen)
		}
		seen = append(seen, buf[:n]...)
	}
	return c
}
