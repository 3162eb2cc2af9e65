package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

// pubRecord is one published message (one batch entry counts as one).
type pubRecord struct {
	seq    uint64
	sent   time.Time // the request was sent
	acked  time.Time // its answer arrived
	status int       // 204, an error status, or 0 for a transport error
}

// interval is a span during which a subscriber was subscribed.
type interval struct{ from, to time.Time }

// event is a status notice a subscriber saw.
type event struct {
	at   time.Time
	what string
}

// subscriber is one SSE stream or WebSocket session on soak.>, reopened
// should it end before the soak closes it.
type subscriber struct {
	name, kind string

	mu        sync.Mutex
	intervals []interval
	openSince time.Time // zero when not subscribed
	got       map[uint64]int
	other     int // messages not from the publishers (requests on soak.echo)
	drops     int // slow-consumer notices
	events    []event
	ends      []string // why a stream or session ended before the soak closed it
}

func (s *subscriber) open(at time.Time) {
	s.mu.Lock()
	s.openSince = at
	s.mu.Unlock()
}

func (s *subscriber) close(at time.Time, why string, expected bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.openSince.IsZero() {
		s.intervals = append(s.intervals, interval{s.openSince, at})
		s.openSince = time.Time{}
	}
	if !expected {
		s.ends = append(s.ends, why)
	}
}

func (s *subscriber) subscribed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.openSince.IsZero()
}

// frame is a message object, a WebSocket frame or a stream notice.
type frame struct {
	Op      string `json:"op"`
	Sid     string `json:"sid"`
	ID      string `json:"id"`
	Subject string `json:"subject"`
	Data    string `json:"data"`
	Nats    string `json:"nats"`
	Gateway string `json:"gateway"`
	Status  int    `json:"status"`
	Message string `json:"message"`
}

// take records a message object or a notice.
func (s *subscriber) take(f *frame) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch f.Op {
	case "", "msg":
		seq, ok := parseSeq(f.Data)
		if !ok || f.Subject == "soak.echo" {
			s.other++
			return
		}
		s.got[seq]++
	case "status":
		what := "nats " + f.Nats
		if f.Gateway != "" {
			what = "gateway " + f.Gateway
		}
		s.events = append(s.events, event{now, what})
	case "error":
		if f.Status == http.StatusTooManyRequests {
			s.drops++
		} else {
			s.events = append(s.events, event{now, fmt.Sprintf("error %d %s", f.Status, f.Message)})
		}
	}
}

// collapse writes runs of the same note once, with their count.
func collapse(notes []string) []string {
	var out []string
	for i := 0; i < len(notes); {
		j := i
		for j < len(notes) && notes[j] == notes[i] {
			j++
		}
		if j-i > 1 {
			out = append(out, fmt.Sprintf("%s ×%d", notes[i], j-i))
		} else {
			out = append(out, notes[i])
		}
		i = j
	}
	return out
}

func parseSeq(data string) (uint64, bool) {
	head, _, ok := strings.Cut(data, "|")
	if !ok {
		return 0, false
	}
	seq, err := strconv.ParseUint(head, 10, 64)
	return seq, err == nil
}

// counter counts outcomes by name.
type counter struct {
	mu sync.Mutex
	m  map[string]int
}

func (c *counter) add(key string, n int) {
	c.mu.Lock()
	c.m[key] += n
	c.mu.Unlock()
}

func (c *counter) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.m))
	for k, v := range c.m {
		out[k] = v
	}
	return out
}

// soak is the load and what it recorded.
type soak struct {
	o     options
	base  string
	token string

	pubClient    *http.Client // publishes and requests
	streamClient *http.Client // SSE streams and WebSocket upgrades

	seq  atomic.Uint64
	pad  string
	mu   sync.Mutex
	pubs []pubRecord
	subs []*subscriber

	outcomes counter
	js       jsState

	t0, downAt, downDone, upAt, stopAt time.Time
	killAt, gwUpAt                     time.Time // the gateway's SIGKILL, and when it answered again
}

func newSoak(o options, base, token string) *soak {
	conns := o.publishers + o.requesters + 8
	return &soak{
		o: o, base: base, token: token,
		pubClient: &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
			MaxIdleConns: conns, MaxIdleConnsPerHost: conns, IdleConnTimeout: 30 * time.Second,
		}},
		streamClient: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, IdleConnTimeout: 5 * time.Second}},
		pad:          strings.Repeat("x", 48),
		outcomes:     counter{m: map[string]int{}},
	}
}

func (sk *soak) closeIdle() {
	sk.pubClient.CloseIdleConnections()
	sk.streamClient.CloseIdleConnections()
}

func (sk *soak) addSubscriber(name, kind string) *subscriber {
	s := &subscriber{name: name, kind: kind, got: map[uint64]int{}}
	sk.mu.Lock()
	sk.subs = append(sk.subs, s)
	sk.mu.Unlock()
	return s
}

func (sk *soak) waitSubscribed(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		n := 0
		for _, s := range sk.subs {
			if s.subscribed() {
				n++
			}
		}
		for _, s := range sk.js.subs {
			s.mu.Lock()
			if s.subscribed {
				n++
			}
			s.mu.Unlock()
		}
		if all := len(sk.subs) + len(sk.js.subs); n == all {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d subscribers subscribed within %v", n, all, limit)
		}
		if !sleepCtx(ctx, 50*time.Millisecond) {
			return ctx.Err()
		}
	}
}

func (sk *soak) newRequest(ctx context.Context, method, path string, body []byte) *http.Request {
	req, _ := http.NewRequestWithContext(ctx, method, sk.base+path, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+sk.token)
	return req
}

// warmUp publishes until the gateway answers 204 (its NATS connection for
// the token is then open).
func (sk *soak) warmUp(ctx context.Context) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := sk.pubClient.Do(sk.newRequest(ctx, "POST", "/v1/publish/soak.warmup", []byte("warm-up")))
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusNoContent {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("warm-up publish failed for 10s: %v %v", err, resp)
		}
		if !sleepCtx(ctx, 200*time.Millisecond) {
			return ctx.Err()
		}
	}
}

func (sk *soak) record(recs ...pubRecord) {
	sk.mu.Lock()
	sk.pubs = append(sk.pubs, recs...)
	sk.mu.Unlock()
}

func (sk *soak) payload(seq uint64, p int) string {
	return fmt.Sprintf("%d|p%d|%s", seq, p, sk.pad)
}

// publisher runs -rate publish operations a second until ctx ends; every
// -batch-every'th is a batch.
func (sk *soak) publisher(ctx context.Context, p int) {
	tick := time.NewTicker(time.Duration(float64(time.Second) / sk.o.rate))
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if sk.o.batchEvery > 0 && n%sk.o.batchEvery == 0 {
			sk.publishBatch(p)
		} else {
			sk.publishOne(p)
		}
	}
}

// publishOne POSTs one message. Its own timeout, not the load's context:
// a publish under way when the load stops still gets its answer.
func (sk *soak) publishOne(p int) {
	seq := sk.seq.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec := pubRecord{seq: seq, sent: time.Now()}
	resp, err := sk.pubClient.Do(sk.newRequest(ctx, "POST", fmt.Sprintf("/v1/publish/soak.%d", p), []byte(sk.payload(seq, p))))
	rec.acked = time.Now()
	if err != nil {
		sk.outcomes.add("publish: transport error", 1)
	} else {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		rec.status = resp.StatusCode
		sk.outcomes.add(fmt.Sprintf("publish: %d", resp.StatusCode), 1)
	}
	sk.record(rec)
}

// publishBatch POSTs -batch-size entries as NDJSON.
func (sk *soak) publishBatch(p int) {
	n := sk.o.batchSize
	recs := make([]pubRecord, n)
	var body bytes.Buffer
	for i := range recs {
		recs[i].seq = sk.seq.Add(1)
		line, _ := json.Marshal(map[string]string{"subject": fmt.Sprintf("soak.%d.b", p), "data": sk.payload(recs[i].seq, p)})
		body.Write(line)
		body.WriteByte('\n')
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := sk.newRequest(ctx, "POST", "/v1/publish", body.Bytes())
	req.Header.Set("Content-Type", "application/x-ndjson")
	sent := time.Now()
	resp, err := sk.pubClient.Do(req)
	acked := time.Now()
	status := 0
	var results struct {
		Results []struct {
			Index  int `json:"index"`
			Status int `json:"status"`
		} `json:"results"`
	}
	if err != nil {
		sk.outcomes.add("batch: transport error", 1)
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		status = resp.StatusCode
		sk.outcomes.add(fmt.Sprintf("batch: %d", status), 1)
		if status == http.StatusMultiStatus {
			_ = json.Unmarshal(b, &results)
		}
	}
	for i := range recs {
		recs[i].sent, recs[i].acked, recs[i].status = sent, acked, status
		if status == http.StatusMultiStatus {
			recs[i].status = 0
			for _, r := range results.Results {
				if r.Index == i {
					recs[i].status = r.Status
				}
			}
		}
		sk.outcomes.add(fmt.Sprintf("batch entry: %d", recs[i].status), 1)
	}
	sk.record(recs...)
}

// httpRequester sends requests to soak.echo, about 20 a second.
func (sk *soak) httpRequester(ctx context.Context, r int) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		body := fmt.Sprintf("h%d-%d", r, n)
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := sk.pubClient.Do(sk.newRequest(rctx, "POST", "/v1/request/soak.echo?timeout=2s", []byte(body)))
		if err != nil {
			sk.outcomes.add("request: transport error", 1)
			cancel()
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		key := fmt.Sprintf("request: %d", resp.StatusCode)
		if resp.StatusCode == http.StatusOK && string(b) != body {
			key = "request: 200 with a wrong reply"
		}
		sk.outcomes.add(key, 1)
	}
}

// dialWS opens a session with the token in the Authorization header.
func (sk *soak) dialWS(ctx context.Context) (*websocket.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	h := http.Header{}
	h.Set("Authorization", "Bearer "+sk.token)
	c, resp, err := websocket.Dial(dctx, "ws"+strings.TrimPrefix(sk.base, "http")+"/v1/ws",
		&websocket.DialOptions{HTTPHeader: h, HTTPClient: sk.streamClient})
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("upgrade %d", resp.StatusCode)
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			return nil, errors.New("connection refused") // the gateway is down
		}
		return nil, err
	}
	c.SetReadLimit(4 << 20)
	return c, nil
}

// closeOnDone closes the session politely when ctx ends; the returned
// function stops that.
func closeOnDone(ctx context.Context, c *websocket.Conn) func() {
	stop := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			_ = c.Close(websocket.StatusNormalClosure, "soak done")
		case <-stop:
		}
	}()
	return func() { close(stop) }
}

func wsWrite(c *websocket.Conn, v any) error {
	b, _ := json.Marshal(v)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.Write(ctx, websocket.MessageText, b)
}

// runSSE keeps an SSE stream on soak.> open until ctx ends.
func (sk *soak) runSSE(ctx context.Context, s *subscriber) {
	for ctx.Err() == nil {
		why := sk.sseOnce(ctx, s)
		s.close(time.Now(), why, ctx.Err() != nil)
		if ctx.Err() == nil {
			sk.outcomes.add("sse: stream ended early: "+why, 1)
			sleepCtx(ctx, 500*time.Millisecond)
		}
	}
}

func (sk *soak) sseOnce(ctx context.Context, s *subscriber) string {
	resp, err := sk.streamClient.Do(sk.newRequest(ctx, "GET", "/v1/subscribe/soak.>", nil))
	if err != nil {
		return "transport error"
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		sk.outcomes.add(fmt.Sprintf("sse: subscribe %d", resp.StatusCode), 1)
		return fmt.Sprintf("status %d", resp.StatusCode)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Bytes()
		switch {
		case bytes.Equal(line, []byte(": subscribed")):
			s.open(time.Now())
		case bytes.HasPrefix(line, []byte(": slow consumer")):
			s.mu.Lock()
			s.drops++
			s.mu.Unlock()
		case bytes.HasPrefix(line, []byte("data: ")):
			var f frame
			if json.Unmarshal(line[len("data: "):], &f) == nil {
				s.take(&f)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "read error"
	}
	return "stream ended"
}

// runWSSubscriber keeps a WebSocket session subscribed to soak.> until
// ctx ends.
func (sk *soak) runWSSubscriber(ctx context.Context, s *subscriber) {
	for ctx.Err() == nil {
		why := sk.wsSubscribeOnce(ctx, s)
		s.close(time.Now(), why, ctx.Err() != nil)
		if ctx.Err() == nil {
			sk.outcomes.add("ws: session ended early: "+why, 1)
			sleepCtx(ctx, 500*time.Millisecond)
		}
	}
}

func (sk *soak) wsSubscribeOnce(ctx context.Context, s *subscriber) string {
	c, err := sk.dialWS(ctx)
	if err != nil {
		return err.Error()
	}
	defer c.CloseNow()
	defer closeOnDone(ctx, c)()
	if err := wsWrite(c, map[string]string{"op": "sub", "sid": "all", "subject": "soak.>"}); err != nil {
		return "write: " + err.Error()
	}
	for {
		data, ended := readWS(c)
		if ended != "" {
			return ended
		}
		var f frame
		if json.Unmarshal(data, &f) != nil {
			continue
		}
		switch f.Op {
		case "ok":
			if f.Sid == "all" {
				s.open(time.Now())
			}
		case "error":
			if f.Status != http.StatusTooManyRequests {
				sk.outcomes.add(fmt.Sprintf("ws subscriber: error %d", f.Status), 1)
			}
			s.take(&f)
		case "connected", "pong":
		default:
			s.take(&f)
		}
	}
}

// wsRequester sends req frames to soak.echo over one session, one at a
// time, about 20 a second.
func (sk *soak) wsRequester(ctx context.Context) {
	for ctx.Err() == nil {
		why := sk.wsRequestOnce(ctx)
		if ctx.Err() == nil {
			sk.outcomes.add("ws request: session ended early: "+why, 1)
			sleepCtx(ctx, 500*time.Millisecond)
		}
	}
}

func (sk *soak) wsRequestOnce(ctx context.Context) string {
	c, err := sk.dialWS(ctx)
	if err != nil {
		return err.Error()
	}
	defer c.CloseNow()
	defer closeOnDone(ctx, c)()
	frames := make(chan frame, 64)
	ended := make(chan string, 1)
	go func() {
		defer close(frames)
		for {
			data, why := readWS(c)
			if why != "" {
				ended <- why
				return
			}
			var f frame
			if json.Unmarshal(data, &f) == nil && (f.Op == "reply" || f.Op == "error") {
				frames <- f
			}
		}
	}()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return "done"
		case <-tick.C:
		}
		id := "r" + strconv.Itoa(n)
		data := "w-" + strconv.Itoa(n)
		if err := wsWrite(c, map[string]any{"op": "req", "id": id, "subject": "soak.echo", "data": data, "timeout_ms": 2000}); err != nil {
			return "write: " + err.Error()
		}
		timeout := time.After(10 * time.Second)
	wait:
		for {
			select {
			case f, ok := <-frames:
				if !ok {
					return <-ended
				}
				if f.ID != id {
					continue
				}
				switch {
				case f.Op == "reply" && f.Data == data:
					sk.outcomes.add("ws request: reply", 1)
				case f.Op == "reply":
					sk.outcomes.add("ws request: wrong reply", 1)
				default:
					sk.outcomes.add(fmt.Sprintf("ws request: error %d", f.Status), 1)
				}
				break wait
			case <-timeout:
				sk.outcomes.add("ws request: no answer in 10s", 1)
				break wait
			}
		}
	}
}

// report prints the results and says whether the soak passed.
func (sk *soak) report(w io.Writer, samples []sample, exit string) bool {
	at := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return fmt.Sprintf("%.1fs", t.Sub(sk.t0).Seconds())
	}
	// The disconnect and reconnect instants: the server's shutdown and
	// restart, and the status notices the subscribers saw.
	firstDown, lastUp := sk.downAt, sk.upAt
	var firstNoticeDown, lastNoticeUp time.Time
	sk.mu.Lock()
	defer sk.mu.Unlock()
	for _, s := range sk.subs {
		s.mu.Lock()
		events := slices.Clone(s.events)
		s.mu.Unlock()
		for _, e := range events {
			switch e.what {
			case "nats disconnected":
				if firstNoticeDown.IsZero() || e.at.Before(firstNoticeDown) {
					firstNoticeDown = e.at
				}
			case "nats reconnected":
				if e.at.After(lastNoticeUp) {
					lastNoticeUp = e.at
				}
			}
		}
	}
	if !firstNoticeDown.IsZero() && firstNoticeDown.Before(firstDown) {
		firstDown = firstNoticeDown
	}
	if lastNoticeUp.After(lastUp) {
		lastUp = lastNoticeUp
	}
	winFrom, winTo := firstDown.Add(-sk.o.margin), lastUp.Add(sk.o.margin)
	// The gateway's SIGKILL takes with it what it had acknowledged but not
	// yet written to subscribers: core messages are at most once.
	killFrom, killTo := sk.killAt.Add(-sk.o.margin), sk.gwUpAt.Add(sk.o.margin)
	inWindow := func(r *pubRecord) bool {
		return !r.acked.Before(winFrom) && !r.acked.After(winTo) ||
			!sk.killAt.IsZero() && !r.acked.Before(killFrom) && !r.acked.After(killTo)
	}

	byStatus := map[int]int{}
	acked := map[uint64]*pubRecord{}
	ackedInOutage := 0
	var lastBefore, firstAfter time.Time // the last 204 before the outage, the first after
	for i := range sk.pubs {
		r := &sk.pubs[i]
		byStatus[r.status]++
		if r.status == http.StatusNoContent {
			acked[r.seq] = r
			if !r.sent.After(sk.downDone) && r.acked.After(lastBefore) {
				lastBefore = r.acked
			}
			if r.sent.After(sk.downDone) && (firstAfter.IsZero() || r.acked.Before(firstAfter)) {
				firstAfter = r.acked
			}
			if r.sent.After(sk.downDone) && r.acked.Before(sk.upAt) {
				ackedInOutage++
			}
		}
	}

	o := sk.o
	fmt.Fprintf(w, "\n=== natsgate soak report ===\n")
	fmt.Fprintf(w, "load: %v; %d publishers at %g ops/s (every %dth op a batch of %d); %d SSE + %d WebSocket subscribers on soak.>; %d HTTP + 1 WebSocket requesters on soak.echo\n",
		o.duration, o.publishers, o.rate, o.batchEvery, o.batchSize, o.sse, o.ws, o.requesters)
	fmt.Fprintf(w, "JetStream: %d stored publishers at %g/s on soakjs.<n>; %d SSE + %d WebSocket JetStream subscribers on %s from seq 1\n",
		o.jsPublishers, o.jsRate, o.jsSSE, o.jsWS, jsSubject)
	fmt.Fprintf(w, "NATS outage: server shutdown from %s to %s, new server up at %s; subscribers' notices: first disconnected %s, last reconnected %s\n",
		at(sk.downAt), at(sk.downDone), at(sk.upAt), at(firstNoticeDown), at(lastNoticeUp))
	fmt.Fprintf(w, "  last publish answered 204 before the outage at %s, first after it at %s\n", at(lastBefore), at(firstAfter))
	fmt.Fprintf(w, "outage window: publishes acknowledged from %s to %s are not held against the subscribers.\n", at(winFrom), at(winTo))
	if !sk.killAt.IsZero() {
		fmt.Fprintf(w, "gateway SIGKILL at %s, answering again at %s: core publishes acknowledged from %s to %s are not held against the\n", at(sk.killAt), at(sk.gwUpAt), at(killFrom), at(killTo))
		fmt.Fprintf(w, "  core subscribers either (what a killed gateway had acknowledged but not yet written is gone: core NATS is at most once).\n")
	}
	fmt.Fprintf(w, "  (%v before the disconnect to %v after the reconnect: a message the server acknowledged just before it went\n", o.margin, o.margin)
	fmt.Fprintf(w, "   down may go down with it, and right after the reconnect subscriptions are being re-established. Between the\n")
	fmt.Fprintf(w, "   two the gateway has no NATS and must not acknowledge anything: publishes sent and answered 204 while the server was down: %d)\n", ackedInOutage)
	keys := slices.Sorted(func(yield func(int) bool) {
		for k := range byStatus {
			if !yield(k) {
				return
			}
		}
	})
	var parts []string
	for _, k := range keys {
		name := strconv.Itoa(k)
		if k == 0 {
			name = "no answer"
		}
		parts = append(parts, fmt.Sprintf("%s: %d", name, byStatus[k]))
	}
	fmt.Fprintf(w, "published messages: %d (%s); stopped at %s\n", len(sk.pubs), strings.Join(parts, ", "), at(sk.stopAt))
	// Publishes sent before the server was gone and answered 204 only after
	// the new one was up: their confirmation may have come from the new
	// server, which never saw them. Reported, not failed (inside the window).
	var straddling, straddlingMissed int
	var straddlingSeqs []string
	for seq, r := range acked {
		if r.sent.After(sk.downDone) || r.acked.Before(sk.upAt) {
			continue
		}
		straddling++
		missedBy := 0
		for _, s := range sk.subs {
			s.mu.Lock()
			if s.got[seq] == 0 {
				missedBy++
			}
			s.mu.Unlock()
		}
		if missedBy > 0 {
			straddlingMissed++
		}
		if len(straddlingSeqs) < 8 {
			straddlingSeqs = append(straddlingSeqs, fmt.Sprintf("#%d sent %s answered %s missed by %d/%d", seq, at(r.sent), at(r.acked), missedBy, len(sk.subs)))
		}
	}
	fmt.Fprintf(w, "sent before the server was gone, answered 204 only after the new one was up: %d, of which %d missed by some subscriber\n", straddling, straddlingMissed)
	for _, v := range straddlingSeqs {
		fmt.Fprintf(w, "  %s\n", v)
	}
	if straddlingMissed > 0 {
		fmt.Fprintf(w, "  WARNING: acknowledged yet delivered to no one: the confirmation round trip (PING) was queued while the\n")
		fmt.Fprintf(w, "  connection was reconnecting and answered by the new server, which never had the message (-strict fails on this)\n")
	}
	fmt.Fprintln(w)

	ok := true
	fmt.Fprintf(w, "%-7s %-9s %9s %9s %6s %5s %8s %6s %6s  %s\n", "client", "subscribed", "expected", "received", "lost", "dup", "unacked", "drops", "other", "status notices / early ends")
	totalLost, totalDup := 0, 0
	for _, s := range sk.subs {
		s.mu.Lock()
		expected, lost, excluded := 0, 0, 0
		var firstLost []uint64
		for seq, r := range acked {
			covered := false
			for _, iv := range s.intervals {
				if !r.sent.Before(iv.from) && !r.acked.After(iv.to) {
					covered = true
					break
				}
			}
			if !covered {
				continue
			}
			if inWindow(r) {
				excluded++
				continue
			}
			expected++
			if s.got[seq] == 0 {
				lost++
				if len(firstLost) < 5 {
					firstLost = append(firstLost, seq)
				}
			}
		}
		received, dup, unacked := 0, 0, 0
		for seq, n := range s.got {
			received += n
			dup += n - 1
			if acked[seq] == nil {
				unacked++
			}
		}
		var notes []string
		for _, e := range s.events {
			notes = append(notes, e.what+"@"+at(e.at))
		}
		var ends []string
		for _, e := range s.ends {
			ends = append(ends, "ended early: "+e)
		}
		notes = append(notes, collapse(ends)...)
		fmt.Fprintf(w, "%-7s %-9s %9d %9d %6d %5d %8d %6d %6d  %s\n", s.name, fmt.Sprintf("%dx", len(s.intervals)),
			expected, received, lost, dup, unacked, s.drops, s.other, strings.Join(notes, ", "))
		if lost > 0 {
			fmt.Fprintf(w, "        lost sequences (first %d): %v\n", len(firstLost), firstLost)
		}
		totalLost += lost
		totalDup += dup
		if len(s.intervals) == 0 {
			ok = false
			fmt.Fprintf(w, "        never subscribed\n")
		}
		s.mu.Unlock()
	}
	fmt.Fprintf(w, "  expected = acknowledged (204) publishes sent after the subscriber was subscribed and answered before it\n")
	fmt.Fprintf(w, "  left, outside the outage window; lost = expected but never received; dup = receptions beyond the first;\n")
	fmt.Fprintf(w, "  unacked = received although not answered 204 (a publish failing during the outage may still reach NATS);\n")
	fmt.Fprintf(w, "  drops = slow-consumer notices; other = requests on soak.echo, which soak.> also sees.\n\n")

	fmt.Fprintf(w, "outcomes by operation and HTTP status (WebSocket: error status):\n")
	out := sk.outcomes.snapshot()
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range out {
			if !yield(k) {
				return
			}
		}
	}) {
		fmt.Fprintf(w, "  %-45s %7d\n", k, out[k])
	}

	fmt.Fprintf(w, "\ngateway (pid RSS from /proc, goroutines from /metrics go_goroutines):\n")
	for _, s := range samples {
		fmt.Fprintf(w, "  %-40s at %6.1fs  RSS %9s  goroutines %5d\n", s.label, s.at.Seconds(), mib(s.rssKB), s.goroutines)
	}
	idle, start, after := samples[0], samples[1], samples[len(samples)-1]
	// After the clients left, the gateway holds what it held before they
	// came (its NATS connection, listeners, the idle reaper): at most the
	// figure under load at start, and close to the idle one.
	back := after.goroutines >= 0 && after.goroutines <= start.goroutines && after.goroutines <= idle.goroutines+10
	fmt.Fprintf(w, "  goroutines back near the start figure after the clients left: %v (after %d; idle %d; start %d; allowed up to min(start, idle+10))\n",
		back, after.goroutines, idle.goroutines, start.goroutines)
	fmt.Fprintf(w, "  shutdown: %s\n\n", exit)

	if len(acked) == 0 {
		ok = false
		fmt.Fprintf(w, "FAIL: nothing was acknowledged\n")
	}
	if totalLost > 0 {
		ok = false
		fmt.Fprintf(w, "FAIL: %d acknowledged messages lost outside the outage window\n", totalLost)
	}
	if totalDup > 0 {
		ok = false
		fmt.Fprintf(w, "FAIL: %d duplicate deliveries\n", totalDup)
	}
	if o.strict && straddlingMissed > 0 {
		ok = false
		fmt.Fprintf(w, "FAIL (-strict): %d publishes answered 204 across the reconnect were not delivered\n", straddlingMissed)
	}
	if ackedInOutage > 0 {
		ok = false
		fmt.Fprintf(w, "FAIL: %d publishes acknowledged while the nats-server was down\n", ackedInOutage)
	}
	if !back {
		ok = false
		fmt.Fprintf(w, "FAIL: the gateway's goroutines did not come back after the clients left\n")
	}
	if ok {
		fmt.Fprintf(w, "PASS: no acknowledged message lost outside the outage window, no duplicates, goroutines back\n")
	}
	return ok
}

// readWS reads a session's next frame; ended, when not empty, says how
// the session ended instead ("closed <code>" or "read error").
func readWS(c *websocket.Conn) (data []byte, ended string) {
	_, data, err := c.Read(context.Background())
	if err == nil {
		return data, ""
	}
	if code := websocket.CloseStatus(err); code != -1 {
		return nil, fmt.Sprintf("closed %d", code)
	}
	return nil, "read error"
}
