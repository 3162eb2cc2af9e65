package web_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"

	"github.com/natsgate/natsgate"
	"github.com/natsgate/natsgate/bridge"
	"github.com/natsgate/natsgate/httpapi"
	"github.com/natsgate/natsgate/web"

	"github.com/natsgate/natsgate/internal/gatewayproc"
)

// Tokens of the test gateways: admin may do anything; orders may publish
// and subscribe under orders.> (and receive replies) only.
const (
	adminToken  = "admin-Tok3n-for-the-browser-tests"
	ordersToken = "orders-Tok3n-for-the-browser-tests"
)

func testTokens() []bridge.Token {
	return []bridge.Token{
		{Name: "admin", Token: adminToken},
		{Name: "orders", Token: ordersToken,
			Publish:   &bridge.SubjectPermission{Allow: []string{"orders.>"}},
			Subscribe: &bridge.SubjectPermission{Allow: []string{"orders.>", "_INBOX.>"}}},
	}
}

// stepTimeout bounds each browser step; testTimeout the whole browser.
const (
	stepTimeout = 20 * time.Second
	testTimeout = 90 * time.Second
)

// gateway is a real gateway: an embedded nats-server, a pool (in-process,
// or over TCP as --nats-url would), and the API with the web assets on an
// http.Server whose listener address survives restarts.
type gateway struct {
	t      *testing.T
	URL    string
	addr   string
	logger *slog.Logger
	logs   *gatewayproc.LogBuffer
	pool   *bridge.Pool
	// storeDir is where the embedded server's JetStream keeps streams
	// (across NATS restarts too); empty: no JetStream.
	storeDir string

	mu  sync.Mutex
	e   *bridge.Embedded
	api *httpapi.Server
	srv *http.Server
}

func startGateway(t *testing.T, external bool) *gateway {
	t.Helper()
	return startGatewayWith(t, external, "")
}

// startGatewayWith starts a gateway whose embedded server runs JetStream,
// storing in storeDir, when storeDir is not empty.
func startGatewayWith(t *testing.T, external bool, storeDir string) *gateway {
	t.Helper()
	logs := &gatewayproc.LogBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	e, err := bridge.StartEmbedded(bridge.EmbeddedConfig{Listen: "127.0.0.1:0", Tokens: testTokens(), Logger: logger,
		JetStream: storeDir != "", StoreDir: storeDir})
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	cfg := bridge.Config{Logger: logger}
	if external {
		cfg.URL, cfg.ReconnectWait = e.ClientURL(), 50*time.Millisecond
	} else {
		cfg.Server = e
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gateway{t: t, URL: "http://" + ln.Addr().String(), addr: ln.Addr().String(), logger: logger, logs: logs, e: e, pool: bridge.NewPool(cfg), storeDir: storeDir}
	g.serve(ln)
	t.Cleanup(func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		g.api.Shutdown()
		_ = g.srv.Close()
		_ = g.pool.Close(context.Background())
		_ = g.e.Shutdown(context.Background())
		if t.Failed() {
			t.Logf("gateway log:\n%s", logs.String())
		}
	})
	return g
}

// serve serves a fresh API on ln.
func (g *gateway) serve(ln net.Listener) {
	api := httpapi.NewServer(g.logger, g.pool, httpapi.Config{Assets: web.Assets, OpenAPI: natsgate.OpenAPI})
	srv := &http.Server{Handler: api, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	g.mu.Lock()
	g.api, g.srv = api, srv
	g.mu.Unlock()
}

// restartHTTP shuts the API down (WebSocket sessions close with 1001),
// waits a moment with nothing listening, then serves a new API on the same
// address.
func (g *gateway) restartHTTP() {
	g.t.Helper()
	g.mu.Lock()
	g.api.Shutdown()
	_ = g.srv.Close()
	g.mu.Unlock()
	time.Sleep(300 * time.Millisecond)
	var ln net.Listener
	var err error
	for range 50 {
		if ln, err = net.Listen("tcp", g.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		g.t.Fatalf("listening again on %s: %v", g.addr, err)
	}
	g.serve(ln)
}

// natsURL is the embedded server's client URL.
func (g *gateway) natsURL() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.e.ClientURL()
}

// stopNATS shuts the NATS server down.
func (g *gateway) stopNATS() {
	g.t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.e.Shutdown(ctx); err != nil {
		g.t.Fatal(err)
	}
}

// startNATS starts a new NATS server on hostPort, as a restarted server
// would be.
func (g *gateway) startNATS(hostPort string) {
	g.t.Helper()
	var e *bridge.Embedded
	var err error
	for range 50 {
		if e, err = bridge.StartEmbedded(bridge.EmbeddedConfig{Listen: hostPort, Tokens: testTokens(), Logger: g.logger, ReadyTimeout: 2 * time.Second,
			JetStream: g.storeDir != "", StoreDir: g.storeDir}); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		g.t.Fatalf("restarting NATS on %s: %v", hostPort, err)
	}
	g.mu.Lock()
	g.e = e
	g.mu.Unlock()
}

// native connects a plain nats.go client to the gateway's NATS server.
func (g *gateway) native(token string) *nats.Conn {
	g.t.Helper()
	nc, err := nats.Connect(g.natsURL(), nats.Token(token))
	if err != nil {
		g.t.Fatalf("native connect: %v", err)
	}
	g.t.Cleanup(nc.Close)
	return nc
}

// nativeSub subscribes a native client (admin token) and makes sure the
// server has the subscription before returning.
func (g *gateway) nativeSub(subject string) *nats.Subscription {
	g.t.Helper()
	nc := g.native(adminToken)
	sub, err := nc.SubscribeSync(subject)
	if err == nil {
		err = nc.Flush()
	}
	if err != nil {
		g.t.Fatalf("native subscribe %s: %v", subject, err)
	}
	return sub
}

// publish publishes over HTTP, as any REST publisher would; NatsH-*
// headers in hdr become NATS headers.
func (g *gateway) publish(subject, body string, hdr ...string) {
	g.t.Helper()
	req, err := http.NewRequest(http.MethodPost, g.URL+"/v1/publish/"+url.PathEscape(subject), strings.NewReader(body))
	if err != nil {
		g.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+adminToken)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		g.t.Fatalf("POST /v1/publish/%s: %v", subject, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusNoContent {
		g.t.Fatalf("POST /v1/publish/%s: %d %s", subject, resp.StatusCode, b)
	}
}

// chromiumPath finds Debian's chromium, or skips (fails, with
// NATSGATE_REQUIRE_BROWSER=1) saying how to install it.
func chromiumPath(t *testing.T) string {
	t.Helper()
	candidates := []string{os.Getenv("NATSGATE_CHROMIUM"), "/usr/bin/chromium"}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			candidates = append(candidates, p)
		}
	}
	for _, p := range candidates {
		if p == "" {
			continue
		}
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	msg := "chromium not found: the browser tests need it (Debian: apt-get install chromium; or set NATSGATE_CHROMIUM)"
	if os.Getenv("NATSGATE_REQUIRE_BROWSER") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// browser is one headless Chromium with one tab.
type browser struct {
	t   *testing.T
	ctx context.Context

	mu      sync.Mutex
	console []string
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	path := chromiumPath(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("no-default-browser-check", true),
		chromedp.Flag("password-store", "basic"),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 860),
	)
	// The allocator's context bounds the browser's whole life.
	allocCtx, cancelAlloc := context.WithTimeout(context.Background(), testTimeout)
	allocCtx, cancelExec := chromedp.NewExecAllocator(allocCtx, opts...)
	ctx, cancelCtx := chromedp.NewContext(allocCtx)
	b := &browser{t: t, ctx: ctx}
	t.Cleanup(func() {
		if t.Failed() {
			b.mu.Lock()
			t.Logf("browser console:\n%s", strings.Join(b.console, "\n"))
			b.mu.Unlock()
		}
		cancelCtx()
		cancelExec()
		cancelAlloc()
	})
	// The first Run starts the browser; it must not have a step timeout.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium (%s): %v", path, err)
	}
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.console = append(b.console, m.String())
			b.mu.Unlock()
		}
	}()
	return b
}

// do runs actions with a step timeout.
func (b *browser) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("%s: %v%s", what, err, b.dump())
	}
}

// eval evaluates a JavaScript expression (awaiting a promise) into T.
func eval[T any](b *browser, js string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("evaluating %s: %v%s", js, err, b.dump())
	}
	return v
}

// waitJS polls a JavaScript condition until it holds.
func (b *browser) waitJS(what, cond string) {
	b.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("!!("+cond+")"))
		cancel()
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) || b.ctx.Err() != nil {
			b.t.Fatalf("timed out waiting for %s (%s; last error %v)%s", what, cond, err, b.dump())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dump describes the console page's state for a failure message.
func (b *browser) dump() string {
	ctx, cancel := context.WithTimeout(b.ctx, 3*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`(() => {
		const t = (id) => { const e = document.getElementById(id); return e ? e.innerText : '(none)'; };
		return 'state: ' + t('state') + ' / nats: ' + t('nats-state') + '\nerrors:\n' + t('errors') + '\nsubs:\n' + t('subs') + '\nlog:\n' + t('log') + '\nrequest:\n' + t('req-result');
	})()`))
	if err != nil {
		return fmt.Sprintf("\n(page state unavailable: %v)", err)
	}
	return "\n--- page ---\n" + s
}

// js quotes a Go string as a JavaScript string literal.
func js(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// openConsole loads the console page and waits for its script.
func (b *browser) openConsole(g *gateway) {
	b.t.Helper()
	b.openConsoleAt(g.URL + "/")
}

// openConsoleAt loads the console page from url and waits for its script.
func (b *browser) openConsoleAt(url string) {
	b.t.Helper()
	b.do("loading the console", chromedp.EmulateViewport(1280, 860), chromedp.Navigate(url))
	b.waitJS("console.js to run", `document.documentElement.dataset.ready === 'true'`)
}

// connect enters the token and connects.
func (b *browser) connect(token string) {
	b.t.Helper()
	b.do("connecting", chromedp.SendKeys(chromedp.ID("token"), token), chromedp.Click(chromedp.ID("connect")))
	b.waitJS("state connected", `document.getElementById('state').textContent === 'connected'`)
}

// subscribe subscribes from the console and waits for the gateway's ok.
func (b *browser) subscribe(subject string) {
	b.t.Helper()
	b.do("subscribing", chromedp.SetValue(chromedp.ID("sub-subject"), subject), chromedp.Click(chromedp.ID("sub-add")))
	b.waitJS("subscription "+subject+" confirmed",
		`[...document.querySelectorAll('#subs li')].some(li => li.dataset.subject === `+js(subject)+` && li.dataset.confirmed === 'true')`)
}

// waitLog waits for a message in the log with this subject whose text
// contains want.
func (b *browser) waitLog(subject, want string) {
	b.t.Helper()
	b.waitJS(fmt.Sprintf("a message on %s containing %q in the log", subject, want),
		`[...document.querySelectorAll('#log .entry.msg')].some(e => e.dataset.subject === `+js(subject)+` && e.innerText.includes(`+js(want)+`))`)
}

// waitNotice waits for a notice line in the log.
func (b *browser) waitNotice(text string) {
	b.t.Helper()
	b.waitJS("notice "+text, `[...document.querySelectorAll('#log .entry.notice')].some(e => e.dataset.notice.startsWith(`+js(text)+`))`)
}

// screenshot writes the page as PNG to the test artifacts
// (artifacts/console.png under the repo root when NATSGATE_ARTIFACTS is
// set, else the test's temp dir) and, with NATSGATE_UPDATE_SCREENSHOT=1,
// to docs/console.png for the README.
func (b *browser) screenshot() {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		b.t.Fatalf("screenshot: %v", err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG")) {
		b.t.Fatalf("screenshot is not a PNG")
	}
	dir := b.t.TempDir()
	if os.Getenv("NATSGATE_ARTIFACTS") != "" {
		dir = filepath.Join("..", "artifacts")
	}
	write := func(dir string) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.t.Fatal(err)
		}
		p := filepath.Join(dir, "console.png")
		if err := os.WriteFile(p, png, 0o644); err != nil {
			b.t.Fatal(err)
		}
		b.t.Logf("screenshot: %s (%d bytes)", p, len(png))
	}
	write(dir)
	if os.Getenv("NATSGATE_UPDATE_SCREENSHOT") == "1" {
		if len(png) > 300<<10 {
			b.t.Fatalf("screenshot is %d bytes, over the 300 KB budget for docs/console.png", len(png))
		}
		write(filepath.Join("..", "docs"))
	}
}

// TestAssetsServed checks the embedded files are served with their types
// and the CSP (no browser needed).
func TestAssetsServed(t *testing.T) {
	g := startGateway(t, false)
	for path, ct := range map[string]string{
		"/":            "text/html",
		"/client.js":   "text/javascript",
		"/client.d.ts": "application/typescript",
		"/console.js":  "text/javascript",
		"/console.css": "text/css",
	} {
		resp, err := http.Get(g.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), ct) ||
			!strings.Contains(resp.Header.Get("Content-Security-Policy"), "script-src 'self'") || len(b) == 0 {
			t.Errorf("GET %s: %d %q CSP %q, %d bytes", path, resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Content-Security-Policy"), len(b))
		}
		// No inline script, style or handler attribute: the CSP would block them.
		if path == "/" {
			for _, bad := range []string{"<style", " style=", "onclick=", "onload=", "javascript:"} {
				if strings.Contains(string(b), bad) {
					t.Errorf("index.html contains %q, which the CSP blocks", bad)
				}
			}
			if strings.Contains(string(b), "<script>") || strings.Contains(string(b), "http://") || strings.Contains(string(b), "https://") {
				t.Errorf("index.html has an inline script or an external asset")
			}
		}
	}
}

// TestConsoleSubscribeSeesHTTPPublish: connect with the token, subscribe,
// and messages published with POST /v1/publish show in the log.
func TestConsoleSubscribeSeesHTTPPublish(t *testing.T) {
	g := startGateway(t, false)
	b := newBrowser(t)
	b.openConsole(g)
	b.connect(adminToken)
	b.subscribe("demo.>")
	b.subscribe("orders.*")

	g.publish("demo.greeting", "hello from curl", "NatsH-Trace", "42")
	g.publish("orders.eu", `{"id":17,"qty":3}`, "NatsH-Content-Type", "application/json")
	g.publish("demo.bin", "\x00\x01\xff")
	b.waitLog("demo.greeting", "hello from curl")
	b.waitLog("demo.greeting", "Trace: 42")
	b.waitLog("orders.eu", `{"id":17,"qty":3}`)
	b.waitLog("demo.bin", "[3 bytes] 00 01 ff")

	// The token stays out of storage, cookies and the URL.
	leak := eval[string](b, `JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.cookie + location.href`)
	if strings.Contains(leak, adminToken) {
		t.Fatalf("the token leaked into storage, cookies or the URL: %s", leak)
	}
	if n := eval[int](b, `document.querySelectorAll('#errors li').length`); n != 0 {
		t.Fatalf("%d errors shown%s", n, b.dump())
	}

	b.do("filling the forms for the screenshot",
		chromedp.SetValue(chromedp.ID("pub-subject"), "demo.greeting"),
		chromedp.SetValue(chromedp.ID("pub-data"), "hello from the console"),
		chromedp.SetValue(chromedp.ID("pub-headers"), "Trace: 43"),
		chromedp.Click(chromedp.ID("pub-send")))
	b.waitLog("demo.greeting", "hello from the console")
	nc := g.native(adminToken)
	if _, err := nc.Subscribe("demo.echo", func(m *nats.Msg) { _ = m.Respond(append([]byte("pong: "), m.Data...)) }); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	b.do("requesting for the screenshot",
		chromedp.SetValue(chromedp.ID("req-subject"), "demo.echo"),
		chromedp.SetValue(chromedp.ID("req-data"), "ping"),
		chromedp.Click(chromedp.ID("req-send")))
	b.waitJS("the reply", `document.getElementById('req-result').textContent.includes('pong: ping')`)
	b.screenshot()

	// Unsubscribing stops the messages.
	b.do("unsubscribing", chromedp.Click(chromedp.CSS(`#subs li[data-subject="demo.>"] button.unsub`)))
	b.waitJS("demo.> gone from the list", `![...document.querySelectorAll('#subs li')].some(li => li.dataset.subject === 'demo.>')`)
	g.publish("demo.after", "after unsubscribe")
	g.publish("orders.marker", "marker")
	b.waitLog("orders.marker", "marker")
	if n := eval[int](b, `document.querySelectorAll('#log .entry.msg[data-subject="demo.after"]').length`); n != 0 {
		t.Fatalf("a message arrived after unsubscribing%s", b.dump())
	}
}

// TestConsolePublishReachesNativeSubscriber: a publish from the console
// form, with headers, reaches a plain nats.go subscriber.
func TestConsolePublishReachesNativeSubscriber(t *testing.T) {
	g := startGateway(t, false)
	sub := g.nativeSub("from.console")
	b := newBrowser(t)
	b.openConsole(g)
	b.connect(adminToken)
	b.do("publishing",
		chromedp.SetValue(chromedp.ID("pub-subject"), "from.console"),
		chromedp.SetValue(chromedp.ID("pub-data"), "héllo ✓"),
		chromedp.SetValue(chromedp.ID("pub-headers"), "Trace: 1\nMulti: a\nMulti: b"),
		chromedp.Click(chromedp.ID("pub-send")))
	m, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("native subscriber: %v%s", err, b.dump())
	}
	if string(m.Data) != "héllo ✓" || m.Header.Get("Trace") != "1" || fmt.Sprint(m.Header.Values("Multi")) != "[a b]" {
		t.Fatalf("native got %q %v", m.Data, m.Header)
	}
	b.waitJS("publish confirmed", `document.getElementById('pub-result').textContent.includes('published to from.console')`)

	// JSON headers work too.
	b.do("publishing with JSON headers",
		chromedp.SetValue(chromedp.ID("pub-data"), "second"),
		chromedp.SetValue(chromedp.ID("pub-headers"), `{"A":"1","B":["2","3"]}`),
		chromedp.Click(chromedp.ID("pub-send")))
	m, err = sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("native subscriber: %v%s", err, b.dump())
	}
	if string(m.Data) != "second" || m.Header.Get("A") != "1" || fmt.Sprint(m.Header.Values("B")) != "[2 3]" {
		t.Fatalf("native got %q %v", m.Data, m.Header)
	}
}

// TestConsoleRequestAnsweredByNativeResponder: a request from the console
// form is answered by a nats.go responder; the reply shows.
func TestConsoleRequestAnsweredByNativeResponder(t *testing.T) {
	g := startGateway(t, false)
	nc := g.native(adminToken)
	if _, err := nc.Subscribe("svc.echo", func(m *nats.Msg) {
		r := nats.NewMsg(m.Reply)
		r.Data = append([]byte("echo: "), m.Data...)
		r.Header.Set("Who", "native")
		_ = m.RespondMsg(r)
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	b := newBrowser(t)
	b.openConsole(g)
	b.connect(adminToken)
	b.do("requesting",
		chromedp.SetValue(chromedp.ID("req-subject"), "svc.echo"),
		chromedp.SetValue(chromedp.ID("req-data"), "ping"),
		chromedp.SetValue(chromedp.ID("req-timeout"), "3000"),
		chromedp.Click(chromedp.ID("req-send")))
	b.waitJS("the reply", `document.getElementById('req-result').textContent.includes('echo: ping')`)
	if got := eval[string](b, `document.getElementById('req-result').textContent`); !strings.Contains(got, "Who: native") {
		t.Fatalf("reply shown without its header: %q", got)
	}

	// No responders: a visible 503.
	b.do("requesting nobody",
		chromedp.SetValue(chromedp.ID("req-subject"), "svc.nobody"),
		chromedp.Click(chromedp.ID("req-send")))
	b.waitJS("the 503", `document.getElementById('req-result').textContent.includes('503')`)
	b.waitJS("the error listed", `document.getElementById('errors').textContent.includes('svc.nobody')`)
}

// TestConsoleWrongTokenShowsError: a rejected token leaves the page
// disconnected with a visible error.
func TestConsoleWrongTokenShowsError(t *testing.T) {
	g := startGateway(t, false)
	b := newBrowser(t)
	b.openConsole(g)
	b.do("connecting with a wrong token", chromedp.SendKeys(chromedp.ID("token"), "not-the-token"), chromedp.Click(chromedp.ID("connect")))
	b.waitJS("an error", `document.querySelectorAll('#errors li').length > 0`)
	b.waitJS("state disconnected", `document.getElementById('state').textContent === 'disconnected'`)
	errs := eval[string](b, `document.getElementById('errors').innerText`)
	if !strings.Contains(errs, "4401") || !strings.Contains(errs, "token rejected") {
		t.Fatalf("errors shown: %q", errs)
	}
	if eval[bool](b, `document.getElementById('sub-add').disabled === false`) {
		t.Fatal("subscribe is enabled while disconnected")
	}
	// The right token then works.
	eval[bool](b, `(document.getElementById('token').value = '') === ''`)
	b.connect(adminToken)
}

// TestConsoleSurvivesNATSRestart: the gateway's NATS server (reached over
// TCP, as --nats-url) restarts; the page sees the status frames and the
// subscription resumes.
func TestConsoleSurvivesNATSRestart(t *testing.T) {
	g := startGateway(t, true)
	b := newBrowser(t)
	b.openConsole(g)
	b.connect(adminToken)
	b.subscribe("restart.>")
	g.publish("restart.before", "before")
	b.waitLog("restart.before", "before")

	u, err := url.Parse(g.natsURL())
	if err != nil {
		t.Fatal(err)
	}
	g.stopNATS()
	b.waitNotice("nats disconnected")
	b.waitJS("NATS state disconnected", `document.getElementById('nats-state').textContent === 'disconnected'`)
	g.startNATS(u.Host)
	b.waitNotice("nats reconnected")
	b.waitJS("NATS state reconnected", `document.getElementById('nats-state').textContent === 'reconnected'`)
	if got := eval[string](b, `document.getElementById('state').textContent`); got != "connected" {
		t.Fatalf("gateway state %q after a NATS restart%s", got, b.dump())
	}
	g.publish("restart.after", "after the NATS restart")
	b.waitLog("restart.after", "after the NATS restart")
}

// TestConsoleReconnectsAfterGatewayRestart: the gateway's HTTP side
// restarts (sessions closed with 1001); the client reconnects with
// backoff, authenticates again and resubscribes by itself.
func TestConsoleReconnectsAfterGatewayRestart(t *testing.T) {
	g := startGateway(t, false)
	b := newBrowser(t)
	b.openConsole(g)
	b.connect(adminToken)
	b.subscribe("again.>")
	g.publish("again.before", "before")
	b.waitLog("again.before", "before")

	g.restartHTTP()
	b.waitNotice("gateway disconnected (1001")
	b.waitNotice("resubscribed again.>")
	b.waitJS("state connected", `document.getElementById('state').textContent === 'connected'`)
	g.publish("again.after", "after the gateway restart")
	b.waitLog("again.after", "after the gateway restart")
	if n := eval[int](b, `document.querySelectorAll('#errors li').length`); n != 0 {
		t.Fatalf("errors shown after a reconnect%s", b.dump())
	}
}

// TestClientModule exercises client.js directly in the page.
func TestClientModule(t *testing.T) {
	g := startGateway(t, false)
	natsSub := g.nativeSub("mod.pub")
	b := newBrowser(t)
	b.openConsole(g)
	// A spy records every frame the gateway sends, before client.js sees it.
	eval[bool](b, `(async () => {
		window.frames_ = [];
		const Orig = WebSocket;
		window.WebSocket = class extends Orig {
			constructor(...a) {
				super(...a);
				this.addEventListener('message', (e) => window.frames_.push(JSON.parse(e.data)));
			}
		};
		window.mod = await import('/client.js');
		window.nc = await mod.connect({ token: `+js(adminToken)+` });
		return true;
	})()`)

	t.Run("publish resolves only after ok", func(t *testing.T) {
		got := eval[map[string]any](b, `(async () => {
			const oks = () => frames_.filter(f => f.op === 'ok' && !f.sid).length;
			const before = oks();
			let settledEarly = false;
			const p = nc.publish('mod.pub', 'confirmed', { headers: { Trace: '9' } });
			await Promise.resolve();
			settledEarly = oks() !== before;
			await p;
			return { before, after: oks(), settledEarly };
		})()`)
		if got["settledEarly"] != false || got["after"].(float64) != got["before"].(float64)+1 {
			t.Fatalf("publish resolved without its ok: %v", got)
		}
		m, err := natsSub.NextMsg(5 * time.Second)
		if err != nil || string(m.Data) != "confirmed" || m.Header.Get("Trace") != "9" {
			t.Fatalf("native got %v %v", m, err)
		}
	})

	t.Run("publish refused by NATS rejects with 403", func(t *testing.T) {
		got := eval[map[string]any](b, `(async () => {
			const c = await mod.connect({ token: `+js(ordersToken)+` });
			try {
				await c.publish('orders.ok', 'allowed');
				await c.publish('forbidden.x', 'nope');
				return { resolved: true };
			} catch (e) {
				return { status: e.status, name: e.name, message: e.message };
			} finally {
				c.close();
			}
		})()`)
		if got["status"] != float64(403) || got["name"] != "NatsgateError" {
			t.Fatalf("forbidden publish: %v", got)
		}
	})

	t.Run("request without responders rejects with 503", func(t *testing.T) {
		got := eval[map[string]any](b, `nc.request('mod.nobody', 'q', { timeout: 2000 }).then(
			() => ({ resolved: true }), (e) => ({ status: e.status, message: e.message }))`)
		if got["status"] != float64(503) {
			t.Fatalf("no responders: %v", got)
		}
	})

	t.Run("binary round trip via data_base64", func(t *testing.T) {
		got := eval[map[string]any](b, `(async () => {
			const sent = new Uint8Array([0, 1, 2, 0xfe, 0xff, 0x80, 10]);
			let resolve;
			const got = new Promise(r => resolve = r);
			const unsub = await nc.subscribe('mod.bin', (m) => resolve(m));
			await nc.publish('mod.bin', sent);
			const m = await got;
			await unsub();
			const wire = frames_.find(f => f.op === 'msg' && f.subject === 'mod.bin');
			return { bytes: Array.from(m.bytes), data: m.data === undefined ? null : m.data, wire: wire.data_base64 || null };
		})()`)
		if fmt.Sprint(got["bytes"]) != "[0 1 2 254 255 128 10]" || got["data"] != nil || got["wire"] != "AAEC/v+ACg==" {
			t.Fatalf("binary round trip: %v", got)
		}
	})

	t.Run("json helper and publishJSON", func(t *testing.T) {
		got := eval[map[string]any](b, `(async () => {
			let resolve;
			const got = new Promise(r => resolve = r);
			const unsub = await nc.subscribe('mod.json', (m) => resolve(m));
			await nc.publish('mod.json', { a: [1, 2], b: 'x' });
			const m = await got;
			await unsub();
			return m.json();
		})()`)
		if fmt.Sprint(got) != "map[a:[1 2] b:x]" {
			t.Fatalf("json: %v", got)
		}
	})

	t.Run("request with a native responder and headers", func(t *testing.T) {
		nc := g.native(adminToken)
		if _, err := nc.Subscribe("mod.echo", func(m *nats.Msg) {
			r := nats.NewMsg(m.Reply)
			r.Data = []byte(m.Header.Get("X") + ":" + string(m.Data))
			_ = m.RespondMsg(r)
		}); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		got := eval[string](b, `nc.request('mod.echo', 'q', { timeout: 2000, headers: { X: 'y' } }).then(m => m.data)`)
		if got != "y:q" {
			t.Fatalf("reply %q", got)
		}
	})

	t.Run("subscribeStream over fetch", func(t *testing.T) {
		got := eval[map[string]any](b, `(async () => {
			const ac = new AbortController();
			let opened, resolve;
			const open = new Promise(r => opened = r);
			const got = new Promise(r => resolve = r);
			const done = mod.subscribeStream({ token: `+js(adminToken)+`, subject: 'mod.sse.>', onOpen: opened, onMessage: resolve, signal: ac.signal });
			await Promise.race([open, done]);
			await nc.publish('mod.sse.one', 'via sse', { headers: { H: 'v' } });
			const m = await Promise.race([got, new Promise((_, rej) => setTimeout(() => rej(new Error('no message in 5s')), 5000))]);
			ac.abort();
			await done;
			return { subject: m.subject, data: m.data, h: m.headers.H };
		})()`)
		if got["subject"] != "mod.sse.one" || got["data"] != "via sse" || fmt.Sprint(got["h"]) != "[v]" {
			t.Fatalf("subscribeStream: %v", got)
		}
		got = eval[map[string]any](b, `mod.subscribeStream({ token: 'wrong-token', subject: 'x', onMessage() {} }).then(
			() => ({ resolved: true }), (e) => ({ status: e.status }))`)
		if got["status"] != float64(401) {
			t.Fatalf("subscribeStream with a wrong token: %v", got)
		}
	})

	t.Run("token never in a URL", func(t *testing.T) {
		got := eval[string](b, `mod.connect({ token: 't', url: location.origin + '/v1/ws?token=t' }).then(() => 'connected', (e) => e.name)`)
		if got != "TypeError" {
			t.Fatalf("a token in the URL gave %q", got)
		}
		urls := eval[[]string](b, `performance.getEntriesByType('resource').map(e => e.name)`)
		for _, u := range urls {
			if strings.Contains(u, adminToken) {
				t.Fatalf("the token appeared in a URL: %s", u)
			}
		}
	})

	t.Run("pending calls reject on disconnect; close is final", func(t *testing.T) {
		got := eval[map[string]any](b, `(async () => {
			const c = await mod.connect({ token: `+js(adminToken)+` });
			const events = [];
			c.on('disconnect', (d) => events.push('disconnect ' + d.code));
			c.on('closed', (d) => events.push('closed ' + d.code));
			const p = c.request('mod.slow', 'q', { timeout: 5000 }).then(() => 'resolved', (e) => 'rejected ' + e.code);
			c.close();
			const r = await p;
			const after = await c.publish('mod.x', 'y').then(() => 'resolved', (e) => e.status);
			return { r, after, events: events.join(','), state: c.state };
		})()`)
		if got["r"] != "rejected 1000" || got["after"] != float64(503) || got["state"] != "closed" || got["events"] != "disconnect 1000,closed 1000" {
			t.Fatalf("after close: %v", got)
		}
	})
}
