package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// tally is what a closed-loop load run counted. One operation may carry
// several messages (a batch).
type tally struct {
	ops, msgs int64
	errs      int64
	firstErr  string
	lat       []time.Duration
	elapsed   time.Duration
	cpu       cpuTimes // CPU used during the measured time
}

func (t *tally) add(o *tally) {
	t.ops += o.ops
	t.msgs += o.msgs
	t.errs += o.errs
	if t.firstErr == "" {
		t.firstErr = o.firstErr
	}
	t.lat = append(t.lat, o.lat...)
	t.elapsed += o.elapsed
	t.cpu = t.cpu.add(o.cpu)
}

func (t *tally) opsPerSec() float64  { return float64(t.ops) / t.elapsed.Seconds() }
func (t *tally) msgsPerSec() float64 { return float64(t.msgs) / t.elapsed.Seconds() }

// percentile of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p * float64(len(sorted)-1))
	return sorted[i]
}

// op is one operation of a worker: it returns the messages it carried and
// an error when it failed (a failed operation counts no messages).
type op func(ctx context.Context) (msgs int, err error)

// closedLoop runs one worker per op, each calling its op back to back
// until d has passed. Operations in flight at the end are let finish and
// counted (cancelling them would close HTTP connections), and the elapsed
// time runs until the last one has.
func closedLoop(ctx context.Context, ops []op, d time.Duration) *tally {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total tally
	)
	start := time.Now()
	deadline := start.Add(d)
	for _, f := range ops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var t tally
			t.lat = make([]time.Duration, 0, 4096)
			for time.Now().Before(deadline) && ctx.Err() == nil {
				s := time.Now()
				n, err := f(ctx)
				el := time.Since(s)
				if err != nil {
					if ctx.Err() != nil {
						break // interrupted
					}
					t.errs++
					if t.firstErr == "" {
						t.firstErr = err.Error()
					}
					continue
				}
				t.ops++
				t.msgs += int64(n)
				t.lat = append(t.lat, el)
			}
			mu.Lock()
			total.add(&t)
			mu.Unlock()
		}()
	}
	wg.Wait()
	total.elapsed = time.Since(start)
	return &total
}

// sideBySide alternates the two sides, slices times each, for d per side
// in total, after an unmeasured warm-up of each.
func sideBySide(ctx context.Context, o *options, g *gateway, a, b []op) (ta, tb *tally, err error) {
	closedLoop(ctx, a, o.warmup)
	closedLoop(ctx, b, o.warmup)
	ta, tb = &tally{}, &tally{}
	slice := o.duration / time.Duration(o.slices)
	for i := 0; i < o.slices; i++ {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		// Alternate which side goes first, so neither always follows the other.
		run := func(t *tally, ops []op) {
			c0 := g.cpuNow()
			r := closedLoop(ctx, ops, slice)
			r.cpu = g.cpuNow().sub(c0)
			t.add(r)
		}
		if i%2 == 0 {
			run(ta, a)
			run(tb, b)
		} else {
			run(tb, b)
			run(ta, a)
		}
	}
	slices.Sort(ta.lat)
	slices.Sort(tb.lat)
	return ta, tb, nil
}

// httpClient is a keep-alive client of at most conns connections, never
// proxied; a request taking 30 s fails.
func httpClient(conns int) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		IdleConnTimeout:     5 * time.Minute,
		DisableCompression:  true,
	}}
}

// httpOp posts body to url and wants a 204.
func httpOp(client *http.Client, url, token, contentType string, body []byte, msgs int) op {
	return httpOpWant(client, url, token, contentType, body, msgs, http.StatusNoContent)
}

// httpOpWant posts body to url and wants the status want.
func httpOpWant(client *http.Client, url, token, contentType string, body []byte, msgs, want int) op {
	return func(ctx context.Context) (int, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", contentType)
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			return 0, fmt.Errorf("status %d", resp.StatusCode)
		}
		return msgs, nil
	}
}

// plainServer is the publish row's baseline: a net/http handler on
// loopback that reads the body and answers 204.
func plainServer() (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusNoContent)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	go func() { _ = srv.Serve(ln) }()
	return ln.Addr().String(), func() { _ = srv.Close() }, nil
}

// waitAtLeast polls until a reaches target or timeout passes, and returns
// a's value.
func waitAtLeast(a *atomic.Int64, target int64, timeout time.Duration) int64 {
	deadline := time.Now().Add(timeout)
	for {
		n := a.Load()
		if n >= target || time.Now().After(deadline) {
			return n
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// cpuTimes is CPU time used by the gateway subprocess and by this process.
type cpuTimes struct{ gateway, self time.Duration }

func (c cpuTimes) add(o cpuTimes) cpuTimes { return cpuTimes{c.gateway + o.gateway, c.self + o.self} }
func (c cpuTimes) sub(o cpuTimes) cpuTimes { return cpuTimes{c.gateway - o.gateway, c.self - o.self} }

// cores renders CPU use over elapsed as cores busy.
func (c cpuTimes) cores(elapsed time.Duration) string {
	return fmt.Sprintf("CPU: gateway %.2f, bench process %.2f cores", c.gateway.Seconds()/elapsed.Seconds(), c.self.Seconds()/elapsed.Seconds())
}

// cpuNow reads the CPU time (user+system) of the gateway and of this
// process.
func (g *gateway) cpuNow() cpuTimes {
	var c cpuTimes
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		c.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if g == nil {
		return c
	}
	data, err := os.ReadFile("/proc/" + strconv.Itoa(g.cmd.Process.Pid) + "/stat")
	if err != nil {
		return c
	}
	// Fields after the parenthesised command: state is field 3, utime 14, stime 15.
	rest := string(data)
	if i := strings.LastIndexByte(rest, ')'); i >= 0 {
		rest = rest[i+1:]
	}
	f := strings.Fields(rest)
	if len(f) < 13 {
		return c
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	c.gateway = time.Duration(ut+st) * time.Second / clockTicks
	return c
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100
