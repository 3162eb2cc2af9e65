package main

import (
	"bytes"
	"cmp"
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

// side is one side of a throughput row: closed-loop ops run in this
// process or, with wrk set, wrk's own loop; srv is the server process
// whose CPU the side reports (nil: the server runs in this process).
type side struct {
	srv *proc
	ops []op
	wrk *wrkLoad
}

// run loads the side for d and returns what it counted.
func (s side) run(ctx context.Context, d time.Duration) (*tally, error) {
	c0 := s.srv.cpuNow()
	var t *tally
	if s.wrk != nil {
		var err error
		if t, err = s.wrk.run(ctx, d); err != nil {
			return nil, err
		}
	} else {
		t = closedLoop(ctx, s.ops, d)
	}
	c := s.srv.cpuNow().sub(c0)
	c.loader = t.cpu.loader
	t.cpu = c
	return t, nil
}

// sideBySide runs the sides in turn, slices times each, for o.duration per
// side in total, after an unmeasured warm-up of each; each slice starts
// with the next side, so none always follows another.
func sideBySide(ctx context.Context, o *options, sides ...side) ([]*tally, error) {
	for _, s := range sides {
		if _, err := s.run(ctx, o.warmup); err != nil {
			return nil, err
		}
	}
	ts := make([]*tally, len(sides))
	for i := range ts {
		ts[i] = &tally{}
	}
	slice := o.duration / time.Duration(o.slices)
	for i := 0; i < o.slices; i++ {
		for k := range sides {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			j := (i + k) % len(sides)
			t, err := sides[j].run(ctx, slice)
			if err != nil {
				return nil, err
			}
			ts[j].add(t)
		}
	}
	for _, t := range ts {
		slices.Sort(t.lat)
	}
	return ts, nil
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

// cpuTimes is CPU time used by a server subprocess (who: "gateway",
// "Centrifugo"), by this process and by a load generator subprocess (wrk).
type cpuTimes struct {
	who                  string
	server, self, loader time.Duration
}

func (c cpuTimes) add(o cpuTimes) cpuTimes {
	return cpuTimes{cmp.Or(c.who, o.who), c.server + o.server, c.self + o.self, c.loader + o.loader}
}

func (c cpuTimes) sub(o cpuTimes) cpuTimes {
	return cpuTimes{cmp.Or(c.who, o.who), c.server - o.server, c.self - o.self, c.loader - o.loader}
}

// cores renders CPU use over elapsed as cores busy.
func (c cpuTimes) cores(elapsed time.Duration) string {
	s := fmt.Sprintf("CPU: bench process %.2f", c.self.Seconds()/elapsed.Seconds())
	if c.who != "" {
		s = fmt.Sprintf("CPU: %s %.2f, bench process %.2f", c.who, c.server.Seconds()/elapsed.Seconds(), c.self.Seconds()/elapsed.Seconds())
	}
	if c.loader > 0 {
		s += fmt.Sprintf(", wrk %.2f", c.loader.Seconds()/elapsed.Seconds())
	}
	return s + " cores"
}

// cpuNow reads the CPU time (user+system) of the server process and of
// this process; a nil g is none (the server is in this process).
func (p *proc) cpuNow() cpuTimes {
	var c cpuTimes
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		c.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if p == nil {
		return c
	}
	c.who = p.kind
	data, err := os.ReadFile("/proc/" + strconv.Itoa(p.cmd.Process.Pid) + "/stat")
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
	c.server = time.Duration(ut+st) * time.Second / clockTicks
	return c
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100
