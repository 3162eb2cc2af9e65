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
	c, r := rawSession(b, addr, token)
	if _, err := c.Write(maskedText(fmt.Appendf(nil, `{"op":"sub","sid":"s","subject":%q}`, subject))); err != nil {
		b.Fatal(err)
	}
	if seen := readRawUntil(b, r, `"op":"ok"`, 1); bytes.Contains(seen, []byte(`"op":"error"`)) {
		b.Fatalf("sub: %s", seen)
	}
	return c
}

// rawSession does a WebSocket handshake by hand on a TCP connection and
// returns it with a reader of what follows.
func rawSession(t testing.TB, addr, token string) (net.Conn, *bufio.Reader) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /v1/ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n", addr, token)
	r := bufio.NewReaderSize(c, 512)
	resp, err := http.ReadResponse(r, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	return c, r
}

// maskedText is a client's text frame of payload, masked with a zero mask
// (so the payload goes as is).
func maskedText(payload []byte) []byte {
	f := []byte{0x81}
	switch n := len(payload); {
	case n <= 125:
		f = append(f, 0x80|byte(n))
	case n <= 0xffff:
		f = append(f, 0x80|126, byte(n>>8), byte(n))
	default:
		panic("frame too large for the test")
	}
	return append(append(f, 0, 0, 0, 0), payload...)
}

// readRawUntil reads from r until what it has read holds want n times (or an
// error frame), and returns it all.
func readRawUntil(t testing.TB, r *bufio.Reader, want string, n int) []byte {
	var seen []byte
	buf := make([]byte, 512)
	for bytes.Count(seen, []byte(want)) < n && !bytes.Contains(seen, []byte(`"op":"error"`)) {
		m, err := r.Read(buf)
		if err != nil {
			t.Fatalf("waiting for %d× %s: %v (%s)", n, want, err, seen)
		}
		seen = append(seen, buf[:m]...)
	}
	return seen
}
