package web_test

import (
	"bufio"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// The tests in this file put the browser client and the console through
// what a network and a gateway do to them: a dead link, a gateway that
// closes sessions at once or is not there, a stream that breaks, a
// callback that throws.

// openAt loads the console page from origin (the gateway, or a proxy in
// front of it) and waits for its script.
func (b *browser) openAt(origin string) {
	b.t.Helper()
	b.do("loading the console", chromedp.EmulateViewport(1280, 860), chromedp.Navigate(origin+"/"))
	b.waitJS("console.js to run", `document.documentElement.dataset.ready === 'true'`)
}

// loadClient imports client.js into the page as window.mod.
func (b *browser) loadClient() {
	b.t.Helper()
	eval[bool](b, `import('/client.js').then((m) => { window.mod = m; return true; })`)
}

// numSubs is the embedded NATS server's subscription count.
func (g *gateway) numSubs() uint32 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.e.NumSubscriptions()
}

// wsSessions is the gateway's count of open WebSocket sessions
// (natsgate_open_streams{transport="ws"}).
func (g *gateway) wsSessions() int {
	g.t.Helper()
	resp, err := http.Get(g.URL + "/metrics")
	if err != nil {
		g.t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), `natsgate_open_streams{transport="ws"} `); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				g.t.Fatalf("metrics line %q: %v", sc.Text(), err)
			}
			return int(n)
		}
	}
	return 0
}

// waitUntil polls cond for up to within.
func waitUntil(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSubscribeStreamEndsWhenCallbackThrows: an onMessage that throws
// rejects subscribeStream with its error and ends the request, so the
// gateway drops the NATS subscription at once instead of feeding a
// stream nobody reads.
func TestSubscribeStreamEndsWhenCallbackThrows(t *testing.T) {
	g := startGateway(t, false)
	b := newBrowser(t)
	b.openAt(g.URL)
	b.loadClient()
	g.publish("warm.up", "the token's NATS connection exists")
	before := g.numSubs()
	eval[bool](b, `(async () => {
		let opened;
		const open = new Promise((r) => opened = r);
		window.streamDone = mod.subscribeStream({ token: `+js(adminToken)+`, subject: 'leak.>', onOpen: opened,
			onMessage() { throw new Error('handler boom'); } }).then(() => 'resolved', (e) => 'rejected: ' + e.message);
		await Promise.race([open, streamDone]);
		return true;
	})()`)
	waitUntil(t, "the stream's NATS subscription", 5*time.Second, func() bool { return g.numSubs() == before+1 })
	g.publish("leak.one", "makes the handler throw")
	if got := eval[string](b, `streamDone`); got != "rejected: handler boom" {
		t.Fatalf("subscribeStream with a throwing onMessage: %q, want the handler's error", got)
	}
	deadline := time.Now().Add(3 * time.Second)
	for g.numSubs() != before {
		if time.Now().After(deadline) {
			t.Fatalf("the gateway still holds the stream's subscription 3 s after subscribeStream rejected (%d subscriptions, %d before)", g.numSubs(), before)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestClientCallsTimeOutOnDeadLink: with liveness pings off, every call
// on a link that stopped forwarding (a frozen proxy) still rejects, with
// 504, within the client's timeout; the session goes on afterwards.
func TestClientCallsTimeOutOnDeadLink(t *testing.T) {
	g := startGateway(t, false)
	p := startProxy(t, g.addr)
	b := newBrowser(t)
	b.openAt(p.URL)
	b.loadClient()
	eval[bool](b, `(async () => {
		window.nc = await mod.connect({ token: `+js(adminToken)+`, pingInterval: 0, timeout: 500 });
		window.errs = [];
		nc.on('error', (d) => errs.push(d.error.message));
		window.unsub = await nc.subscribe('dead.sub', () => {});
		return true;
	})()`)
	p.freeze()
	got := eval[map[string]any](b, `(async () => {
		const settle = (p) => Promise.race([
			p.then(() => 'resolved', (e) => e.status === undefined ? 'no status: ' + e.message : e.status),
			new Promise((r) => setTimeout(() => r('still pending after 5 s'), 5000))]);
		const [publish, ping, unsubscribe, subscribe, request] = await Promise.all([
			settle(nc.publish('dead.pub', 'x')),
			settle(nc.ping()),
			settle(unsub()),
			settle(nc.subscribe('dead.other', () => {})),
			settle(nc.request('dead.req', 'q', { timeout: 200 })),
		]);
		return { publish, ping, unsubscribe, subscribe, request, state: nc.state, subs: nc.subscriptions.length };
	})()`)
	for _, call := range []string{"publish", "ping", "unsubscribe", "subscribe", "request"} {
		if got[call] != float64(504) {
			t.Errorf("%s on a dead link: %v, want a rejection with status 504", call, got[call])
		}
	}
	if got["state"] != "connected" || got["subs"] != float64(0) {
		t.Errorf("after the timeouts: state %v, %v subscriptions; want connected (no pings), none", got["state"], got["subs"])
	}
	p.thaw()
	// The late answers are ignored, not reported; the session still works.
	if got := eval[string](b, `nc.ping().then(() => nc.publish('dead.after', 'y')).then(() => 'ok', (e) => e.message)`); got != "ok" {
		t.Fatalf("after the link came back: %s", got)
	}
	if got := eval[[]string](b, `errs`); len(got) != 0 {
		t.Fatalf("error events for the late answers of abandoned calls: %q", got)
	}
}

// TestClientPingDetectsDeadLink: on a link that stopped forwarding, the
// liveness ping times out; the client drops the socket as 1006 (pending
// calls reject with 503, disconnect fires), keeps trying (attempts that
// hang time out too), and is back once the link is.
func TestClientPingDetectsDeadLink(t *testing.T) {
	g := startGateway(t, false)
	p := startProxy(t, g.addr)
	b := newBrowser(t)
	b.openAt(p.URL)
	b.loadClient()
	eval[bool](b, `(async () => {
		window.ev = [];
		window.nc = await mod.connect({ token: `+js(adminToken)+`, pingInterval: 200, pingTimeout: 300,
			connectTimeout: 600, reconnectDelay: 50, maxReconnectDelay: 200, timeout: 60000 });
		nc.on('disconnect', (d) => ev.push('disconnect ' + d.code + ' ' + d.willReconnect));
		nc.on('reconnecting', (d) => ev.push('reconnecting ' + d.attempt));
		nc.on('connect', (d) => ev.push('connect ' + d.reconnected));
		return true;
	})()`)
	p.freeze()
	got := eval[map[string]any](b, `(async () => {
		const r = await Promise.race([
			nc.publish('dead.pub', 'x').then(() => 'resolved', (e) => ({ status: e.status, code: e.code })),
			new Promise((r) => setTimeout(() => r('still pending after 5 s'), 5000))]);
		return { r, state: nc.state, ev: ev.join(',') };
	})()`)
	if r, _ := got["r"].(map[string]any); r == nil || r["status"] != float64(503) || r["code"] != float64(1006) {
		t.Fatalf("a publish on a dead link: %v, want a rejection with status 503, code 1006 (events %v)", got["r"], got["ev"])
	}
	if got["state"] != "reconnecting" || !strings.HasPrefix(got["ev"].(string), "disconnect 1006 true") {
		t.Fatalf("after the dead link: state %v, events %v; want reconnecting after disconnect 1006", got["state"], got["ev"])
	}
	b.waitJS("a second attempt, the first having timed out", `ev.includes('reconnecting 2')`)
	p.thaw()
	b.waitJS("connected again", `nc.state === 'connected' && ev.includes('connect true')`)
	if got := eval[string](b, `nc.publish('alive.again', 'z').then(() => 'ok', (e) => e.message)`); got != "ok" {
		t.Fatalf("publish after the link came back: %s", got)
	}
}

// TestConsoleNATSBadgeFollowsConnectedFrame: a session opened while the
// token's NATS connection is down says so in its connected frame, and the
// NATS badge shows it.
func TestConsoleNATSBadgeFollowsConnectedFrame(t *testing.T) {
	g := startGateway(t, true)
	b := newBrowser(t)
	b.openConsole(g)
	b.connect(adminToken)
	b.waitJS("NATS badge connected", `document.getElementById('nats-state').textContent === 'connected'`)
	u, err := url.Parse(g.natsURL())
	if err != nil {
		t.Fatal(err)
	}
	g.stopNATS()
	b.waitJS("NATS badge disconnected", `document.getElementById('nats-state').textContent === 'disconnected'`)
	b.do("disconnecting", chromedp.Click(chromedp.ID("disconnect")))
	b.waitJS("state disconnected", `document.getElementById('state').textContent === 'disconnected'`)
	b.do("connecting again", chromedp.Click(chromedp.ID("connect")))
	b.waitJS("state connected", `document.getElementById('state').textContent === 'connected'`)
	if got := eval[string](b, `document.getElementById('nats-state').textContent`); got != "disconnected" {
		t.Fatalf("NATS badge %q for a session whose connected frame says NATS is disconnected%s", got, b.dump())
	}
	g.startNATS(u.Host)
	b.waitJS("NATS badge reconnected", `document.getElementById('nats-state').textContent === 'reconnected'`)
}

// TestConsoleDisconnectWhileConnectingCancels: Disconnect while the
// first attempt is under way cancels it, and a second Connect leaves one
// session, not an orphan besides it.
func TestConsoleDisconnectWhileConnectingCancels(t *testing.T) {
	g := startGateway(t, false)
	p := startProxy(t, g.addr)
	b := newBrowser(t)
	b.openAt(p.URL)
	p.freeze()
	b.do("connecting through a frozen link", chromedp.SendKeys(chromedp.ID("token"), adminToken), chromedp.Click(chromedp.ID("connect")))
	b.waitJS("state connecting", `document.getElementById('state').textContent === 'connecting'`)
	b.do("disconnecting", chromedp.Click(chromedp.ID("disconnect")))
	b.waitJS("state disconnected", `document.getElementById('state').textContent === 'disconnected'`)
	b.do("connecting again", chromedp.Click(chromedp.ID("connect")))
	b.waitJS("state connecting", `document.getElementById('state').textContent === 'connecting'`)
	p.thaw()
	b.waitJS("state connected", `document.getElementById('state').textContent === 'connected'`)
	waitUntil(t, "the session at the gateway", 5*time.Second, func() bool { return g.wsSessions() >= 1 })
	// Give a cancelled attempt, had it gone on, time to show up.
	eval[bool](b, `new Promise((r) => setTimeout(() => r(true), 500))`)
	if n := g.wsSessions(); n != 1 {
		t.Fatalf("%d WebSocket sessions at the gateway after Disconnect while connecting and Connect again, want 1%s", n, b.dump())
	}
	if got := eval[string](b, `document.getElementById('state').textContent`); got != "connected" {
		t.Fatalf("state %q%s", got, b.dump())
	}
}

// TestConsoleTrimsToken: spaces or a tab around a pasted token are not
// part of it.
func TestConsoleTrimsToken(t *testing.T) {
	g := startGateway(t, false)
	b := newBrowser(t)
	b.openConsole(g)
	b.do("connecting with a padded token", chromedp.SetValue(chromedp.ID("token"), " \t"+adminToken+"  "), chromedp.Click(chromedp.ID("connect")))
	b.waitJS("the attempt to settle", `document.getElementById('state').textContent === 'connected' || document.querySelectorAll('#errors li').length > 0`)
	if got := eval[string](b, `document.getElementById('state').textContent`); got != "connected" {
		t.Fatalf("a token with spaces around it: state %q%s", got, b.dump())
	}
}

// TestClientBackoffGrowsWhileSessionsDieYoung: a gateway that closes
// every session right after "connected" (1013) gets attempts further and
// further apart, not one every 50–100 ms for ever; a session that lives
// past backoffResetAfter starts the backoff afresh.
func TestClientBackoffGrowsWhileSessionsDieYoung(t *testing.T) {
	g := startGateway(t, false)
	p := startProxy(t, g.addr)
	b := newBrowser(t)
	b.openAt(p.URL)
	b.loadClient()
	p.kickAfterConnected(1013)
	eval[bool](b, `(async () => {
		window.ev = [];
		window.nc = new mod.NatsgateClient({ token: `+js(adminToken)+`, reconnectDelay: 100, maxReconnectDelay: 1600, backoffResetAfter: 1500 });
		nc.on('reconnecting', (d) => ev.push(d));
		nc.on('connect', () => window.connectedAt = performance.now());
		await nc.start();
		return true;
	})()`)
	waitUntil(t, "six sessions", 10*time.Second, func() bool { return len(p.upgradeTimes()) >= 6 })
	p.kickAfterConnected(0)
	ups := p.upgradeTimes()
	got := eval[[]map[string]any](b, `ev.slice(0, 5)`)
	for i, d := range got {
		attempt, delay := d["attempt"].(float64), d["delay"].(float64)
		if least := 100 * float64(int(1)<<i) / 2; attempt != float64(i+1) || delay < least || d["code"] != float64(1013) {
			t.Errorf("reconnect %d after a 1013 right after connected: %v, want attempt %d, delay at least %v ms", i+1, d, i+1, least)
		}
	}
	if gap := ups[5].Sub(ups[4]); gap < 700*time.Millisecond {
		t.Errorf("the 6th session came %v after the 5th, want at least 700 ms (the 5th backoff step)", gap)
	}
	if t.Failed() {
		t.FailNow()
	}

	// Kicking stopped: the 6th session, accepted while it was on, is
	// still kicked (the 6th reconnect); the next one stays. Once it has
	// lived past backoffResetAfter, a loss starts again at attempt 1.
	b.waitJS("a session that stays", `ev.length >= 6 && nc.state === 'connected'`)
	eval[bool](b, `new Promise((r) => setTimeout(() => r(true), Math.max(0, connectedAt + 1600 - performance.now())))`)
	n := eval[int](b, `ev.length`)
	p.cut()
	b.waitJS("the reconnect after a cut", fmt.Sprintf(`ev.length > %d`, n))
	if got := eval[map[string]any](b, fmt.Sprintf(`ev[%d]`, n)); got["attempt"] != float64(1) || got["code"] != float64(1006) {
		t.Fatalf("reconnect after a session that lived 1.6 s: %v, want attempt 1 (code 1006)", got)
	}
	b.waitJS("connected again", `nc.state === 'connected'`)
}

// TestClientCloseInDisconnectListenerIsFinal: close() called from a
// disconnect listener ends the client: closed, and no reconnecting after.
func TestClientCloseInDisconnectListenerIsFinal(t *testing.T) {
	g := startGateway(t, false)
	b := newBrowser(t)
	b.openAt(g.URL)
	b.loadClient()
	eval[bool](b, `(async () => {
		window.ev = [];
		window.nc = await mod.connect({ token: `+js(adminToken)+`, reconnectDelay: 50 });
		nc.on('disconnect', (d) => { ev.push('disconnect ' + d.code); nc.close(); });
		nc.on('reconnecting', (d) => ev.push('reconnecting ' + d.attempt));
		nc.on('closed', (d) => ev.push('closed ' + d.code));
		return true;
	})()`)
	g.restartHTTP()
	b.waitJS("closed", `ev.some((e) => e.startsWith('closed'))`)
	// Longer than the reconnect delay: a scheduled attempt would show.
	got := eval[string](b, `new Promise((r) => setTimeout(() => r(ev.join(',') + ' / ' + nc.state), 300))`)
	if got != "disconnect 1001,closed 1000 / closed" {
		t.Fatalf("events after close() in a disconnect listener: %q, want %q", got, "disconnect 1001,closed 1000 / closed")
	}
}

// TestClientErrorsCarryStatus: failures whose status is known carry it:
// an unreachable gateway 503, a stream broken mid-way 503, a token that
// fetch cannot put in a header 401 (a bad token, not an outage).
func TestClientErrorsCarryStatus(t *testing.T) {
	g := startGateway(t, false)
	p := startProxy(t, g.addr)
	b := newBrowser(t)
	b.openAt(p.URL)
	b.loadClient()

	t.Run("a token a header cannot carry is 401", func(t *testing.T) {
		for _, tok := range []string{"bad\ntoken", "nul\u0000token", "tök€n"} {
			got := eval[map[string]any](b, `mod.subscribeStream({ token: `+js(tok)+`, subject: 'x', onMessage() {} }).then(
				() => ({ resolved: true }), (e) => ({ status: e.status ?? null, name: e.name, message: e.message }))`)
			if got["status"] != float64(401) || got["name"] != "NatsgateError" {
				t.Errorf("subscribeStream with token %q: %v, want a NatsgateError with status 401", tok, got)
			}
		}
	})

	t.Run("a stream broken mid-way is 503", func(t *testing.T) {
		eval[bool](b, `(async () => {
			let opened;
			const open = new Promise((r) => opened = r);
			window.streamDone = mod.subscribeStream({ token: `+js(adminToken)+`, subject: 'broken.>', onOpen: opened, onMessage() {} }).then(
				() => ({ resolved: true }), (e) => ({ status: e.status ?? null, name: e.name, message: e.message }));
			await Promise.race([open, streamDone]);
			return true;
		})()`)
		p.cut()
		got := eval[map[string]any](b, `streamDone`)
		if got["status"] != float64(503) || got["name"] != "NatsgateError" {
			t.Fatalf("subscribeStream cut mid-stream: %v, want a NatsgateError with status 503", got)
		}
	})

	t.Run("an unreachable gateway is 503", func(t *testing.T) {
		p.refuse()
		got := eval[map[string]any](b, `mod.connect({ token: `+js(adminToken)+` }).then(
			(c) => { c.close(); return { resolved: true }; }, (e) => ({ status: e.status ?? null, code: e.code ?? null, message: e.message }))`)
		if got["status"] != float64(503) || got["code"] != float64(1006) {
			t.Fatalf("connect() to a gateway that is not there: %v, want status 503, code 1006", got)
		}
	})
}
