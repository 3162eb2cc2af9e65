package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"golang.org/x/crypto/bcrypt"

	"github.com/natsgate/natsgate/internal/gatewayproc"
)

// started is a gateway run by run() in the test process.
type started struct {
	base, natsURL  string
	stdout, stderr *gatewayproc.LogBuffer
	cancel         context.CancelFunc
	done           chan error
}

var (
	natsRe = regexp.MustCompile(`client_url"?[=:]"?(nats://[0-9.]+:[0-9]+)`)
)

// start runs the gateway with args (plus random ports) and waits until it
// logs its address.
func start(t *testing.T, env map[string]string, args ...string) *started {
	t.Helper()
	args = append([]string{"--listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0"}, args...)
	ctx, cancel := context.WithCancel(context.Background())
	s := &started{stdout: &gatewayproc.LogBuffer{}, stderr: &gatewayproc.LogBuffer{}, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- run(ctx, args, func(k string) string { return env[k] }, s.stdout, s.stderr) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if addr, ok := gatewayproc.ListenAddr(s.stderr.String()); ok {
			s.base = "http://" + addr
			if slices.Contains(args, "--tls-cert") {
				s.base = "https://" + addr
			}
			break
		}
		select {
		case err := <-s.done:
			t.Fatalf("run returned early: %v\n%s", err, s.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway did not start:\n%s", s.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if m := natsRe.FindStringSubmatch(s.stderr.String()); m != nil {
		s.natsURL = m[1]
	}
	t.Cleanup(func() {
		cancel()
		<-s.done
	})
	return s
}

// stop cancels run's context and returns its error, bounded.
func (s *started) stop(t *testing.T) error {
	t.Helper()
	s.cancel()
	select {
	case err := <-s.done:
		s.done <- err // for the cleanup
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("run did not return within 20s of cancellation")
		return nil
	}
}

func post(t *testing.T, url, token, body string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func TestRunEndToEndWithGeneratedToken(t *testing.T) {
	s := start(t, nil)
	m := regexp.MustCompile(`(?m)^    export TOKEN=([A-Za-z0-9_-]{20,})$`).FindStringSubmatch(s.stdout.String())
	if m == nil {
		t.Fatalf("no generated token to paste (export TOKEN=…) on stdout:\n%s", s.stdout)
	}
	token := m[1]
	for _, want := range []string{
		`curl -N -H "Authorization: Bearer $TOKEN" '` + s.base + `/v1/subscribe/demo.>'`,
		`curl -i -H "Authorization: Bearer $TOKEN" -d 'hello' ` + s.base + "/v1/publish/demo.greeting",
		"console:      " + s.base + "/",
		"native NATS:  " + s.natsURL,
	} {
		if !strings.Contains(s.stdout.String(), want) {
			t.Fatalf("the banner lacks %q:\n%s", want, s.stdout)
		}
	}

	// A curl-style SSE subscriber and a native NATS subscriber both see
	// what an HTTP POST publishes.
	req, _ := http.NewRequest("GET", s.base+"/v1/subscribe/demo", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("subscribe: %v %v", err, resp)
	}
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	if s.natsURL == "" {
		t.Fatalf("no native NATS URL logged:\n%s", s.stderr)
	}
	nc, err := nats.Connect(s.natsURL, nats.Token(token))
	if err != nil {
		t.Fatalf("native client: %v", err)
	}
	defer nc.Close()
	sub, _ := nc.SubscribeSync("demo")
	nc.Flush()
	if code := post(t, s.base+"/v1/publish/demo", token, "hello"); code != 204 {
		t.Fatalf("publish: %d", code)
	}
	if msg, err := sub.NextMsg(2 * time.Second); err != nil || string(msg.Data) != "hello" {
		t.Fatalf("native subscriber: %v %v", msg, err)
	}
	for l := range lines {
		if l == `data: {"subject":"demo","data":"hello"}` {
			break
		}
	}
	if code := post(t, s.base+"/v1/publish/demo", "wrong", "x"); code != 401 {
		t.Fatalf("wrong token: %d", code)
	}

	// Shutdown: the stream ends, run returns nil.
	if err := s.stop(t); err != nil {
		t.Fatalf("run: %v", err)
	}
	for range lines {
	}
	if strings.Contains(s.stderr.String(), token) {
		t.Fatal("the generated token appears in the logs")
	}
	if !strings.Contains(s.stderr.String(), `msg=stopped`) {
		t.Fatalf("no clean stop logged:\n%s", s.stderr)
	}
}

func TestEnvironmentTwinsAndHelp(t *testing.T) {
	s := start(t, map[string]string{"GATEWAY_TOKEN": "from-env", "GATEWAY_LOG_FORMAT": "json"})
	if code := post(t, s.base+"/v1/publish/x", "from-env", ""); code != 204 {
		t.Fatalf("GATEWAY_TOKEN not used: %d", code)
	}
	if strings.Contains(s.stdout.String(), "generated") {
		t.Fatal("a token was generated although GATEWAY_TOKEN was set")
	}
	if !strings.Contains(s.stderr.String(), `{"time":`) {
		t.Fatal("GATEWAY_LOG_FORMAT=json not used")
	}

	var out gatewayproc.LogBuffer
	if err := run(context.Background(), []string{"--help"}, func(string) string { return "" }, &out, &out); err != nil {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"--listen", "GATEWAY_LISTEN", "--nats-url", "GATEWAY_NATS_URL", "--tokens-file",
		"GATEWAY_TOKENS_FILE", "--nats-config", "--nats-listen", "GATEWAY_ALLOWED_ORIGINS", "--shutdown-timeout"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help does not mention %s", want)
		}
	}
}

func TestBadFlagsAreErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--token", "a", "--tokens-file", "x.json"},
		{"--tokens-file", "/does/not/exist.json"},
		{"--log-format", "xml"},
		{"stray"},
	} {
		err := run(context.Background(), append([]string{"--listen", "127.0.0.1:0", "--nats-listen", "off"}, args...),
			func(string) string { return "" }, io.Discard, io.Discard)
		if err == nil {
			t.Errorf("%v: no error", args)
		}
	}
	err := run(context.Background(), []string{"--max-tokens", "lots"}, func(string) string { return "" }, io.Discard, io.Discard)
	if err == nil {
		t.Error("a bad flag value is not an error")
	}
	err = run(context.Background(), nil, func(k string) string {
		if k == "GATEWAY_MAX_TOKENS" {
			return "lots"
		}
		return ""
	}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "GATEWAY_MAX_TOKENS") {
		t.Errorf("a bad environment value: %v", err)
	}
}

func TestSlowHeadersAreCutOff(t *testing.T) {
	s := start(t, nil, "--token", "t", "--read-header-timeout", "300ms")
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "POST /v1/publish/x HTTP/1.1\r\nHost: x\r\n") // and never finish
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	_, err = io.ReadAll(conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the gateway kept a connection with unfinished headers open for 5s")
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("closed after %v, before the header timeout", d)
	}
}

func TestTokensFileReloadOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tokens.json")
	write := func(body string) {
		if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"tokens":[{"name":"keep","token":"keep-secret"},{"name":"drop","token":"drop-secret","publish":{"allow":["drop.>"]}}]}`)
	s := start(t, nil, "--tokens-file", file)
	if code := post(t, s.base+"/v1/publish/drop.x", "drop-secret", ""); code != 204 {
		t.Fatalf("drop-secret before reload: %d", code)
	}
	if code := post(t, s.base+"/v1/publish/other", "drop-secret", ""); code != 403 {
		t.Fatalf("drop-secret outside its permissions: %d", code)
	}
	wsURL := "ws" + strings.TrimPrefix(s.base, "http") + "/v1/ws"
	dial := func(token string) *websocket.Conn {
		c, _, err := websocket.Dial(context.Background(), wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + token}}})
		if err != nil {
			t.Fatal(err)
		}
		if _, b, err := c.Read(context.Background()); err != nil || !strings.Contains(string(b), "connected") {
			t.Fatalf("no connected frame: %s %v", b, err)
		}
		return c
	}
	keep, drop := dial("keep-secret"), dial("drop-secret")
	defer keep.CloseNow()
	defer drop.CloseNow()

	// A broken file is refused and the old tokens stay.
	write(`{"tokens":[`)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitLog(t, s, "tokens file reload failed")
	if code := post(t, s.base+"/v1/publish/drop.x", "drop-secret", ""); code != 204 {
		t.Fatalf("after a broken reload: %d", code)
	}

	write(`{"tokens":[{"name":"keep","token":"keep-secret"}]}`)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitLog(t, s, "tokens file reloaded")
	var err error
	for err == nil { // status frames may come first
		_, _, err = drop.Read(context.Background())
	}
	if code := websocket.CloseStatus(err); code != 4401 {
		t.Fatalf("removed token's session ended with %v, want close 4401", err)
	}
	if code := post(t, s.base+"/v1/publish/drop.x", "drop-secret", ""); code != 401 {
		t.Fatalf("removed token: %d, want 401", code)
	}
	// The other token's session was not dropped.
	keep.Write(context.Background(), websocket.MessageText, []byte(`{"op":"ping"}`))
	if _, b, err := keep.Read(context.Background()); err != nil || !strings.Contains(string(b), "pong") {
		t.Fatalf("kept token's session: %s %v", b, err)
	}
	if code := post(t, s.base+"/v1/publish/any", "keep-secret", ""); code != 204 {
		t.Fatalf("kept token: %d", code)
	}
}

// TestBcryptTokenRemovedDuringItsCheckLosesItsRights: the first request
// with a bcrypt token is still being checked by the server when a reload
// removes the token. That request, and every later one, is refused; none
// inherits a connection accepted under the old tokens.
func TestBcryptTokenRemovedDuringItsCheckLosesItsRights(t *testing.T) {
	// The lowest bcrypt cost that takes at least 300 ms here (the race
	// detector makes it several times slower), so the reload lands while
	// the server compares.
	var hash []byte
	for cost := 8; hash == nil; cost++ {
		start := time.Now()
		h, err := bcrypt.GenerateFromPassword([]byte("slow-secret"), cost)
		if err != nil {
			t.Fatal(err)
		}
		if time.Since(start) >= 300*time.Millisecond || cost == bcrypt.MaxCost {
			hash = h
		}
	}
	file := filepath.Join(t.TempDir(), "tokens.json")
	write := func(body string) {
		if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"tokens":[{"name":"keep","token":"keep-secret"},{"name":"slow","token":"` + string(hash) + `"}]}`)
	s := start(t, nil, "--tokens-file", file)
	status := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("POST", s.base+"/v1/publish/x", nil)
		req.Header.Set("Authorization", "Bearer slow-secret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			status <- 0
			return
		}
		resp.Body.Close()
		status <- resp.StatusCode
	}()
	time.Sleep(60 * time.Millisecond)
	select {
	case code := <-status:
		t.Fatalf("the first request was answered (%d) before the reload: bcrypt too fast for this test", code)
	default:
	}
	write(`{"tokens":[{"name":"keep","token":"keep-secret"}]}`)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitLog(t, s, "tokens file reloaded")
	if code := <-status; code != 401 {
		t.Fatalf("the request being checked during the reload: %d, want 401", code)
	}
	for range 3 {
		if code := post(t, s.base+"/v1/publish/x", "slow-secret", ""); code != 401 {
			t.Fatalf("the removed token after the reload: %d, want 401", code)
		}
	}
	// The NATS server itself refuses it too: no pooled connection
	// answers for it.
	if nc, err := nats.Connect(s.natsURL, nats.Token("slow-secret")); err == nil {
		nc.Close()
		t.Fatal("a native client connected with the removed token")
	}
	if code := post(t, s.base+"/v1/publish/x", "keep-secret", ""); code != 204 {
		t.Fatalf("kept token: %d", code)
	}
}

func waitLog(t *testing.T, s *started, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(s.stderr.String(), what) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log:\n%s", what, s.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSlowBodiesAreCutOffButStreamsLive(t *testing.T) {
	s := start(t, nil, "--token", "t", "--read-header-timeout", "200ms", "--body-timeout", "300ms")
	host := strings.TrimPrefix(s.base, "http://")
	// A body that never finishes: 408, connection closed.
	conn, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "POST /v1/publish/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nContent-Length: 10\r\n\r\nab")
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("slow body: %v %v, want 408", resp, err)
	}
	// An SSE stream and a WebSocket session outlive the read timeout.
	req, _ := http.NewRequest("GET", s.base+"/v1/subscribe/live", nil)
	req.Header.Set("Authorization", "Bearer t")
	sse, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer sse.Body.Close()
	ws, _, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(s.base, "http")+"/v1/ws",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer t"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	time.Sleep(time.Second)
	if code := post(t, s.base+"/v1/publish/live", "t", "still here"); code != 204 {
		t.Fatalf("publish: %d", code)
	}
	sc := bufio.NewScanner(sse.Body)
	for sc.Scan() && !strings.Contains(sc.Text(), "still here") {
	}
	if sc.Err() != nil {
		t.Fatalf("SSE stream ended: %v", sc.Err())
	}
	ws.Write(context.Background(), websocket.MessageText, []byte(`{"op":"ping"}`))
	for {
		_, b, err := ws.Read(context.Background())
		if err != nil {
			t.Fatalf("WebSocket session ended: %v", err)
		}
		if strings.Contains(string(b), "pong") {
			break
		}
	}
}
