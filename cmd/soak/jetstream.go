package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The JetStream part of the soak: stored publishes over HTTP, retried
// with the same Idempotency-Key until the stream acknowledges them, and
// JetStream subscribers over SSE (resuming with Last-Event-ID) and
// WebSocket (resuming with start_seq) reading the stream from its first
// message, through the NATS outage and the gateway's SIGKILL. The stream
// itself, read directly from the nats-server at the end, is the ground
// truth: every subscriber must have received each of its messages once,
// in order, and every message id must be stored exactly once.

const (
	jsStream  = "SOAKJS"
	jsSubject = "soakjs.>"
)

// jsPub is one stored message as its publisher saw it.
type jsPub struct {
	id       string
	seq      uint64 // from the acknowledgement; 0 if never acknowledged
	attempts int
	dupAck   bool // an acknowledgement said duplicate: a retry of one already stored
	refused  int  // a status that retrying cannot change (4xx but 408/429), last seen
}

// jsSubscriber is one JetStream subscriber, SSE or WebSocket.
type jsSubscriber struct {
	name, kind string

	mu         sync.Mutex
	subscribed bool
	last       uint64            // the last seq received
	seqs       []uint64          // every seq received, in order of arrival
	ids        map[uint64]string // seq → message id in its payload
	resumes    int               // subscriptions made again from start_seq / Last-Event-ID
	idMismatch int               // SSE: an event whose id: is not its message's seq
	gaps       []string
	notes      map[string]int // why it reconnected, errors, status notices
}

func (s *jsSubscriber) note(what string) {
	s.mu.Lock()
	s.notes[what]++
	s.mu.Unlock()
}

// take records a message object of the subscription.
func (s *jsSubscriber) take(seq uint64, data string) {
	id, _, _ := strings.Cut(data, "|")
	s.mu.Lock()
	s.seqs = append(s.seqs, seq)
	if _, seen := s.ids[seq]; !seen {
		s.ids[seq] = id
	}
	s.last = max(s.last, seq)
	s.mu.Unlock()
}

func (s *jsSubscriber) lastSeq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// jsMsg is a message object (or notice) of a JetStream subscription.
type jsMsg struct {
	Op      string `json:"op"`
	Sid     string `json:"sid"`
	ID      string `json:"id"`
	Subject string `json:"subject"`
	Data    string `json:"data"`
	Stream  string `json:"stream"`
	Seq     uint64 `json:"seq"`
	Nats    string `json:"nats"`
	Gateway string `json:"gateway"`
	Status  int    `json:"status"`
	Message string `json:"message"`
	Gap     *struct {
		FirstSeq     uint64 `json:"first_seq"`
		RequestedSeq uint64 `json:"requested_seq"`
	} `json:"gap"`
}

// jsState is what the JetStream part recorded.
type jsState struct {
	mu   sync.Mutex
	pubs []*jsPub
	subs []*jsSubscriber
}

func (sk *soak) addJSSubscriber(name, kind string) *jsSubscriber {
	s := &jsSubscriber{name: name, kind: kind, ids: map[uint64]string{}, notes: map[string]int{}}
	sk.js.mu.Lock()
	sk.js.subs = append(sk.js.subs, s)
	sk.js.mu.Unlock()
	return s
}

// createStream makes the soak's stream through the gateway.
func (sk *soak) createStream(ctx context.Context) error {
	cfg := `{"subjects":["` + jsSubject + `"],"storage":"file","duplicate_window":120000000000}`
	resp, err := sk.pubClient.Do(sk.newRequest(ctx, http.MethodPut, "/v1/streams/"+jsStream, []byte(cfg)))
	if err != nil {
		return fmt.Errorf("PUT /v1/streams/%s: %w", jsStream, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("PUT /v1/streams/%s: %d %s", jsStream, resp.StatusCode, b)
	}
	return nil
}

// jsPublisher stores -js-rate messages a second on soakjs.<p>, one at a
// time, until ctx ends. Each gets a message id of its own, sent as the
// Idempotency-Key, and is retried with it until the stream acknowledges
// it (or, once the load has stopped, for at most 30 s more): nothing the
// publisher meant to store is lost, nothing is stored twice.
func (sk *soak) jsPublisher(ctx context.Context, p int) {
	tick := time.NewTicker(time.Duration(float64(time.Second) / sk.o.jsRate))
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		m := &jsPub{id: fmt.Sprintf("js%d-%d", p, n)}
		sk.js.mu.Lock()
		sk.js.pubs = append(sk.js.pubs, m)
		sk.js.mu.Unlock()
		sk.storeUntilAcked(ctx, p, m)
	}
}

func (sk *soak) storeUntilAcked(ctx context.Context, p int, m *jsPub) {
	body := []byte(m.id + "|" + sk.pad)
	path := fmt.Sprintf("/v1/js/publish/soakjs.%d", p)
	var giveUp time.Time
	backoff := 50 * time.Millisecond
	for {
		m.attempts++
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		req := sk.newRequest(rctx, http.MethodPost, path, body)
		req.Header.Set("Idempotency-Key", m.id)
		resp, err := sk.pubClient.Do(req)
		status := 0
		var ack struct {
			Seq       uint64 `json:"seq"`
			Duplicate bool   `json:"duplicate"`
		}
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			status = resp.StatusCode
			if status == http.StatusOK && json.Unmarshal(b, &ack) != nil {
				status = -1
			}
		}
		cancel()
		switch {
		case status == http.StatusOK:
			sk.outcomes.add("stored publish: 200", 1)
			if ack.Duplicate {
				sk.outcomes.add("stored publish: 200 duplicate (a retry of one stored)", 1)
			}
			m.seq, m.dupAck = ack.Seq, m.dupAck || ack.Duplicate
			return
		case status == 0:
			sk.outcomes.add("stored publish: transport error", 1)
		default:
			sk.outcomes.add(fmt.Sprintf("stored publish: %d", status), 1)
			if status >= 400 && status < 500 && status != http.StatusRequestTimeout && status != http.StatusTooManyRequests {
				m.refused = status
				return
			}
		}
		if ctx.Err() != nil && giveUp.IsZero() {
			giveUp = time.Now().Add(30 * time.Second)
		}
		if !giveUp.IsZero() && time.Now().After(giveUp) {
			return
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, time.Second)
	}
}

// runJSSSE reads the stream as SSE from its first message, and after any
// end resumes as a browser's EventSource would: the same URL, with
// Last-Event-ID the last id received.
func (sk *soak) runJSSSE(ctx context.Context, s *jsSubscriber) {
	for ctx.Err() == nil {
		why := sk.jsSSEOnce(ctx, s)
		s.mu.Lock()
		s.subscribed = false
		s.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		s.note("reconnected after: " + why)
		sleepCtx(ctx, 250*time.Millisecond)
	}
}

func (sk *soak) jsSSEOnce(ctx context.Context, s *jsSubscriber) string {
	req := sk.newRequest(ctx, http.MethodGet, "/v1/subscribe/"+jsSubject+"?deliver=all", nil)
	last := s.lastSeq()
	if last > 0 {
		req.Header.Set("Last-Event-ID", strconv.FormatUint(last, 10))
	}
	resp, err := sk.streamClient.Do(req)
	if err != nil {
		return "transport error"
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Sprintf("status %d", resp.StatusCode)
	}
	if last > 0 {
		s.mu.Lock()
		s.resumes++
		s.mu.Unlock()
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var id, event string
	var data []byte
	for sc.Scan() {
		line := sc.Bytes()
		switch {
		case len(line) == 0:
			if data != nil {
				var m jsMsg
				if json.Unmarshal(data, &m) != nil {
					s.note("undecodable event")
				} else if event == "status" {
					s.notice(&m)
				} else {
					if id != strconv.FormatUint(m.Seq, 10) {
						s.mu.Lock()
						s.idMismatch++
						s.mu.Unlock()
					}
					s.take(m.Seq, m.Data)
				}
			}
			id, event, data = "", "", nil
		case bytes.Equal(line, []byte(": subscribed")):
			s.mu.Lock()
			s.subscribed = true
			s.mu.Unlock()
		case line[0] == ':':
			if !bytes.Equal(line, []byte(": keep-alive")) {
				s.note("comment " + string(line[1:]))
			}
		default:
			field, val, _ := bytes.Cut(line, []byte(":"))
			val = bytes.TrimPrefix(val, []byte(" "))
			switch string(field) {
			case "id":
				id = string(val)
			case "event":
				event = string(val)
			case "data":
				data = append([]byte(nil), val...)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "read error"
	}
	return "stream ended"
}

// notice records a status notice.
func (s *jsSubscriber) notice(m *jsMsg) {
	switch {
	case m.Gap != nil:
		s.mu.Lock()
		s.gaps = append(s.gaps, fmt.Sprintf("first_seq %d requested_seq %d", m.Gap.FirstSeq, m.Gap.RequestedSeq))
		s.mu.Unlock()
	case m.Nats != "":
		s.note("status nats " + m.Nats)
	case m.Gateway != "":
		s.note("status gateway " + m.Gateway)
	}
}

// runJSWS reads the stream over a WebSocket session from its first
// message, and after any end resumes with start_seq one past the last
// seq received, as the JS client does; within a session, a subscription
// refused for the time being (NATS away) or whose feed the gateway ended
// is made again the same way.
func (sk *soak) runJSWS(ctx context.Context, s *jsSubscriber) {
	for ctx.Err() == nil {
		why := sk.jsWSOnce(ctx, s)
		s.mu.Lock()
		s.subscribed = false
		s.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		s.note("reconnected after: " + why)
		sleepCtx(ctx, 250*time.Millisecond)
	}
}

func (sk *soak) jsWSOnce(ctx context.Context, s *jsSubscriber) string {
	c, err := sk.dialWS(ctx)
	if err != nil {
		return "dial: " + err.Error()
	}
	defer c.CloseNow()
	defer closeOnDone(ctx, c)()
	n := 0
	sub := func() error {
		n++
		f := map[string]any{"op": "sub", "sid": "js", "subject": jsSubject, "id": "sub" + strconv.Itoa(n)}
		if last := s.lastSeq(); last > 0 {
			f["start_seq"] = last + 1
			s.mu.Lock()
			s.resumes++
			s.mu.Unlock()
		} else {
			f["deliver"] = "all"
		}
		return wsWrite(c, f)
	}
	resub := func() error {
		time.Sleep(250 * time.Millisecond)
		if err := wsWrite(c, map[string]string{"op": "unsub", "sid": "js", "id": "unsub" + strconv.Itoa(n)}); err != nil {
			return err
		}
		return sub()
	}
	if err := sub(); err != nil {
		return "write: " + err.Error()
	}
	for {
		data, ended := readWS(c)
		if ended != "" {
			return ended
		}
		var m jsMsg
		if json.Unmarshal(data, &m) != nil {
			s.note("undecodable frame")
			continue
		}
		switch m.Op {
		case "msg":
			if m.Sid == "js" {
				s.take(m.Seq, m.Data)
			}
		case "ok":
			if strings.HasPrefix(m.ID, "sub") {
				s.mu.Lock()
				s.subscribed = true
				s.mu.Unlock()
			}
		case "status":
			s.notice(&m)
		case "error":
			switch {
			case strings.HasPrefix(m.ID, "unsub"):
			case m.Sid == "js" && (m.ID == "" || strings.HasPrefix(m.ID, "sub")):
				// Refused (with the sub's id) or its feed ended (no id).
				what := "feed ended"
				if m.ID != "" {
					what = "sub refused"
				}
				s.note(fmt.Sprintf("%s: %d %s", what, m.Status, truncate(m.Message, 60)))
				if m.Status >= 400 && m.Status < 500 && m.Status != http.StatusTooManyRequests {
					return fmt.Sprintf("subscription refused for good: %d", m.Status)
				}
				if err := resub(); err != nil {
					return "write: " + err.Error()
				}
			default:
				s.note(fmt.Sprintf("error %d", m.Status))
			}
		}
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// waitJSCaughtUp waits until every JetStream subscriber has received
// the stream's last seq.
func (sk *soak) waitJSCaughtUp(ctx context.Context, lastSeq uint64, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		behind := 0
		for _, s := range sk.js.subs {
			if s.lastSeq() < lastSeq {
				behind++
			}
		}
		if behind == 0 {
			return
		}
		sleepCtx(ctx, 100*time.Millisecond)
	}
	logf("some JetStream subscribers had not reached seq %d within %v", lastSeq, limit)
}

// storedMsg is one message of the stream as the server holds it.
type storedMsg struct {
	seq uint64
	id  string
}

// readStream reads the whole stream straight from the nats-server.
func readStream(ctx context.Context, natsURL, token string) ([]storedMsg, error) {
	nc, err := nats.Connect(natsURL, nats.Token(token), nats.Name("soak-verify"))
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, jsStream)
	if err != nil {
		return nil, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, err
	}
	last := info.State.LastSeq
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return nil, err
	}
	var out []storedMsg
	for uint64(len(out)) < info.State.Msgs {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				return nil, err
			}
			id, _, _ := strings.Cut(string(m.Data()), "|")
			out = append(out, storedMsg{seq: md.Sequence.Stream, id: id})
		}
		if err := batch.Error(); err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, fmt.Errorf("read %d of %d messages (last seq %d), then nothing", len(out), info.State.Msgs, last)
		}
	}
	return out, nil
}

// jsReport prints the JetStream table and says whether it passed.
func (sk *soak) jsReport(w io.Writer, stored []storedMsg, readErr error) bool {
	ok := true
	fmt.Fprintf(w, "\n--- JetStream: stream %s (file storage, on %s), stored publishes over HTTP with an Idempotency-Key each ---\n", jsStream, jsSubject)
	if readErr != nil {
		fmt.Fprintf(w, "FAIL: reading the stream from the nats-server: %v\n", readErr)
		return false
	}
	sk.js.mu.Lock()
	defer sk.js.mu.Unlock()

	// The publishers against the stream.
	byID := map[string][]uint64{}
	bySeq := map[uint64]string{}
	for _, m := range stored {
		byID[m.id] = append(byID[m.id], m.seq)
		bySeq[m.seq] = m.id
	}
	var acked, firstTry, retried, dupAcks, refused, unconfirmed, doubled, ackedNotStored, wrongSeq, unackedStored int
	for _, p := range sk.js.pubs {
		seqs := byID[p.id]
		if len(seqs) > 1 {
			doubled++
		}
		switch {
		case p.seq != 0:
			acked++
			if p.attempts == 1 {
				firstTry++
			} else {
				retried++
			}
			if p.dupAck {
				dupAcks++
			}
			if len(seqs) == 0 {
				ackedNotStored++
			} else if seqs[0] != p.seq {
				wrongSeq++
			}
		case p.refused != 0:
			refused++
		default:
			unconfirmed++
			if len(seqs) > 0 {
				unackedStored++
			}
		}
	}
	foreign := 0
	for id := range byID {
		if !strings.HasPrefix(id, "js") {
			foreign++
		}
	}
	fmt.Fprintf(w, "publishers: %d messages meant; acknowledged %d (%d at the first try, %d after retries with the same key, %d of those answered duplicate: stored by an earlier try);\n",
		len(sk.js.pubs), acked, firstTry, retried, dupAcks)
	fmt.Fprintf(w, "  refused %d, never acknowledged %d (%d of them stored nonetheless); the stream holds %d messages (seq %s);\n",
		refused, unconfirmed, unackedStored, len(stored), seqSpan(stored))
	fmt.Fprintf(w, "  stored twice: %d; acknowledged but not stored: %d; acknowledged with another seq than the stream's: %d\n", doubled, ackedNotStored, wrongSeq)
	if doubled > 0 || ackedNotStored > 0 || wrongSeq > 0 || refused > 0 || unconfirmed > 0 || foreign > 0 || len(stored) == 0 {
		ok = false
		fmt.Fprintf(w, "FAIL: the stored publishes: every message meant must be stored exactly once, and acknowledged with its seq\n")
	}

	// The subscribers against the stream: each from seq 1 to the end.
	type kindTotals struct{ subs, expected, received, lost, dup, order, gaps, resumes, idMismatch int }
	totals := map[string]*kindTotals{}
	fmt.Fprintf(w, "\n%-9s %-5s %8s %8s %8s %6s %5s %6s %5s %7s  %s\n", "client", "kind", "resumes", "expected", "received", "lost", "dup", "order", "gaps", "wrongid", "notes")
	for _, s := range sk.js.subs {
		s.mu.Lock()
		count := map[uint64]int{}
		order := 0
		var prev uint64
		for _, seq := range s.seqs {
			count[seq]++
			if seq <= prev {
				order++
			}
			prev = max(prev, seq)
		}
		lost, dup, wrongID := 0, 0, s.idMismatch
		for _, m := range stored {
			if count[m.seq] == 0 {
				lost++
			}
		}
		for seq, n := range count {
			dup += n - 1
			if id, held := bySeq[seq]; !held || s.ids[seq] != id {
				wrongID++
			}
		}
		var notes []string
		for _, k := range sortedKeys(s.notes) {
			notes = append(notes, fmt.Sprintf("%s ×%d", k, s.notes[k]))
		}
		for _, g := range s.gaps {
			notes = append(notes, "gap "+g)
		}
		fmt.Fprintf(w, "%-9s %-5s %8d %8d %8d %6d %5d %6d %5d %7d  %s\n", s.name, s.kind, s.resumes, len(stored), len(s.seqs), lost, dup, order, len(s.gaps), wrongID, strings.Join(notes, "; "))
		t := totals[s.kind]
		if t == nil {
			t = &kindTotals{}
			totals[s.kind] = t
		}
		t.subs++
		t.expected += len(stored)
		t.received += len(s.seqs)
		t.lost += lost
		t.dup += dup
		t.order += order
		t.gaps += len(s.gaps)
		t.resumes += s.resumes
		t.idMismatch += wrongID
		s.mu.Unlock()
	}
	fmt.Fprintf(w, "  expected = the stream's messages (every subscriber reads from seq 1); lost = in the stream, never received;\n")
	fmt.Fprintf(w, "  dup = receptions beyond the first; order = a seq at or below one received before; wrongid = a seq whose\n")
	fmt.Fprintf(w, "  payload is not the stream's message at that seq (SSE: or whose event id: is not its seq); resumes = subscriptions\n")
	fmt.Fprintf(w, "  made again from one past the last seq received (SSE: Last-Event-ID; WebSocket: start_seq).\n\n")

	fmt.Fprintf(w, "| subscribers | count | resumes | stored messages expected | received | lost | duplicated | out of order | gaps |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|\n")
	for _, kind := range []string{"sse", "ws"} {
		t := totals[kind]
		if t == nil {
			continue
		}
		label := map[string]string{"sse": "JetStream over SSE (Last-Event-ID)", "ws": "JetStream over WebSocket (start_seq)"}[kind]
		fmt.Fprintf(w, "| %s | %d | %d | %d | %d | **%d** | **%d** | %d | %d |\n", label, t.subs, t.resumes, t.expected, t.received, t.lost, t.dup, t.order, t.gaps)
		if t.lost > 0 || t.dup > 0 || t.order > 0 || t.gaps > 0 || t.idMismatch > 0 {
			ok = false
		}
	}
	fmt.Fprintf(w, "| stored publishes (HTTP, Idempotency-Key, retried) | %d | %d retried | %d meant | %d stored | **%d** | **%d** | — | — |\n",
		sk.o.jsPublishers, retried, len(sk.js.pubs), len(stored), ackedNotStored+unconfirmed+refused, doubled)
	fmt.Fprintln(w)
	if !ok {
		fmt.Fprintf(w, "FAIL: JetStream: a stored message lost, duplicated, out of order, or a publish not stored exactly once\n")
	} else {
		fmt.Fprintf(w, "PASS: JetStream: every stored message reached every subscriber once, in order; every publish stored exactly once\n")
	}
	return ok
}

func seqSpan(stored []storedMsg) string {
	if len(stored) == 0 {
		return "none"
	}
	return fmt.Sprintf("%d…%d", stored[0].seq, stored[len(stored)-1].seq)
}

func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
