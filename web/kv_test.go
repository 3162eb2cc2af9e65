package web_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go/jetstream"
)

// startKVGateway is a gateway with JetStream and the bucket "cfg"
// (history 5).
func startKVGateway(t *testing.T) *gateway {
	t.Helper()
	g := startGatewayWith(t, false, t.TempDir())
	g.http("POST", "/v1/kvm/buckets/cfg", `{"history":5}`, 201)
	return g
}

// http sends a request with the admin token and checks its status; it
// returns the body.
func (g *gateway) http(method, path, body string, want int, hdr ...string) string {
	g.t.Helper()
	req, err := http.NewRequest(method, g.URL+path, strings.NewReader(body))
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
		g.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		g.t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, b, want)
	}
	return string(b)
}

// kvConsumers counts the consumers on a bucket's stream.
type kvConsumers struct {
	t  *testing.T
	st jetstream.Stream
}

func (g *gateway) kvConsumers(bucket string) kvConsumers {
	g.t.Helper()
	js, err := jetstream.New(g.native(adminToken))
	if err != nil {
		g.t.Fatal(err)
	}
	st, err := js.Stream(context.Background(), "KV_"+bucket)
	if err != nil {
		g.t.Fatal(err)
	}
	return kvConsumers{t: g.t, st: st}
}

func (c kvConsumers) count() int {
	c.t.Helper()
	info, err := c.st.Info(context.Background())
	if err != nil {
		c.t.Fatal(err)
	}
	return info.State.Consumers
}

// nativeKV is the bucket through a native NATS client.
func (g *gateway) nativeKV(bucket string) jetstream.KeyValue {
	g.t.Helper()
	js, err := jetstream.New(g.native(adminToken))
	if err != nil {
		g.t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), bucket)
	if err != nil {
		g.t.Fatal(err)
	}
	return kv
}

// stopHTTP shuts the API down (WebSocket sessions close with 1001) and
// leaves nothing listening until serveAgain.
func (g *gateway) stopHTTP() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.api.Shutdown()
	_ = g.srv.Close()
}

// serveAgain serves a new API on the gateway's address.
func (g *gateway) serveAgain() {
	g.t.Helper()
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

// tab opens another tab in the same browser.
func (b *browser) tab() *browser {
	b.t.Helper()
	ctx, cancel := chromedp.NewContext(b.ctx)
	b.t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil {
		b.t.Fatalf("opening a tab: %v", err)
	}
	return &browser{t: b.t, ctx: ctx}
}

// clientPage loads the console (any page of the gateway would do), spies
// on the frames the gateway sends (window.frames_) and connects
// window.nc with the client module as window.mod.
func (b *browser) clientPage(g *gateway) {
	b.t.Helper()
	b.openConsole(g)
	eval[bool](b, `(async () => {
		window.frames_ = [];
		window.sent_ = [];
		const Orig = WebSocket;
		window.WebSocket = class extends Orig {
			constructor(...a) {
				super(...a);
				this.addEventListener('message', (e) => window.frames_.push(JSON.parse(e.data)));
			}
			send(d) { window.sent_.push(JSON.parse(d)); return super.send(d); }
		};
		window.mod = await import('/client.js');
		window.nc = await mod.connect({ token: `+js(adminToken)+`, reconnectDelay: 100, maxReconnectDelay: 500 });
		return true;
	})()`)
}

// TestClientKVFromTheBrowser runs kv().get/put/create/delete/keys from a
// page: entries and revisions, null for a key without a value, 412 for a
// stale revision and 409 for a create over a value (status and kind on
// the error), binary values, and a missing bucket.
func TestClientKVFromTheBrowser(t *testing.T) {
	g := startKVGateway(t)
	b := newBrowser(t)
	b.clientPage(g)
	got := eval[map[string]any](b, `(async () => {
		const kv = nc.kv('cfg');
		const out = {};
		const fail = (p) => p.then((v) => ({ resolved: v }), (e) => ({ name: e.name, status: e.status, kind: e.kind }));
		out.missing = await kv.get('ui.theme');
		out.r1 = await kv.put('ui.theme', 'dark');
		const e = await kv.get('ui.theme');
		out.entry = { bucket: e.bucket, key: e.key, revision: e.revision, operation: e.operation, data: e.data, created: typeof e.created };
		out.r2 = await kv.put('ui.theme', 'light', { revision: out.r1 });
		out.stale = await fail(kv.put('ui.theme', 'blue', { revision: out.r1 }));
		out.afterStale = (await kv.get('ui.theme')).data;
		out.onlyNew = await fail(kv.put('ui.theme', 'x', { revision: 0 }));
		out.c1 = await kv.create('ui.font', { size: 12 });
		out.font = (await kv.get('ui.font')).json();
		out.again = await fail(kv.create('ui.font', 'twice'));
		out.bin = await kv.put('blob/a=b', new Uint8Array([0, 0xff, 7]));
		const bin = await kv.get('blob/a=b');
		out.binBytes = Array.from(bin.bytes);
		out.binData = bin.data === undefined ? null : bin.data;
		out.keys = await kv.keys();
		out.uiKeys = await kv.keys('ui.>');
		out.staleDelete = await fail(kv.delete('ui.font', { revision: 1 }));
		await kv.delete('ui.font', { revision: out.c1 });
		out.deleted = await kv.get('ui.font');
		await kv.delete('blob/a=b', { purge: true });
		out.keysAfter = await kv.keys();
		out.noBucket = await fail(nc.kv('nope').get('k'));
		out.badKey = await fail(kv.get('a..b'));
		return out;
	})()`)
	want := map[string]string{
		"missing":     "<nil>",
		"r1":          "1",
		"entry":       "map[bucket:cfg created:string data:dark key:ui.theme operation:PUT revision:1]",
		"r2":          "2",
		"stale":       "map[kind:precondition-failed name:NatsgateError status:412]",
		"afterStale":  "light",
		"onlyNew":     "map[kind:precondition-failed name:NatsgateError status:412]",
		"c1":          "3",
		"font":        "map[size:12]",
		"again":       "map[kind:conflict name:NatsgateError status:409]",
		"bin":         "4",
		"binBytes":    "[0 255 7]",
		"binData":     "<nil>",
		"keys":        "[blob/a=b ui.font ui.theme]",
		"uiKeys":      "[ui.font ui.theme]",
		"staleDelete": "map[kind:precondition-failed name:NatsgateError status:412]",
		"deleted":     "<nil>",
		"keysAfter":   "[ui.theme]",
		"noBucket":    "map[kind:no-bucket name:NatsgateError status:404]",
		"badKey":      "map[kind:bad-key name:NatsgateError status:400]",
	}
	for k, w := range want {
		if s := fmt.Sprint(got[k]); s != w {
			t.Errorf("%s: %s, want %s", k, s, w)
		}
	}
	if v := g.http("GET", "/v1/kv/cfg/ui.theme", "", 200); v != "light" {
		t.Fatalf("ui.theme is %q from Go", v)
	}
	urls := eval[[]string](b, `performance.getEntriesByType('resource').map(e => e.name)`)
	for _, u := range urls {
		if strings.Contains(u, adminToken) {
			t.Fatalf("the token appeared in a URL: %s", u)
		}
	}
}

// TestTwoPagesWatchOneKey: two pages watch one key; one writes it with
// the revision it expects and the other sees the change; a write with a
// stale revision is refused (412) and seen by neither watch. After the
// gateway restarts, a write made while the pages were away reaches each
// watch once: it resumed with resumeRevision one past the last revision
// it had delivered. Stopping a watch removes its consumer.
func TestTwoPagesWatchOneKey(t *testing.T) {
	g := startKVGateway(t)
	g.http("PUT", "/v1/kv/cfg/ui.theme", "dark", 200)
	g.http("PUT", "/v1/kv/cfg/other", "noise", 200)
	a := newBrowser(t)
	bb := a.tab()
	pages := map[string]*browser{"a": a, "b": bb}
	for name, p := range pages {
		p.clientPage(g)
		eval[bool](p, `(async () => {
			window.seen = [];
			window.currents = 0;
			window.stopWatch = await nc.kv('cfg').watch((e) => seen.push({ rev: e.revision, data: e.data, op: e.operation, key: e.key }),
				{ filter: 'ui.theme', onCurrent: () => currents++ });
			return true;
		})()`)
		p.waitJS(name+" to see the current value", `seen.length === 1 && seen[0].rev === 1 && seen[0].data === 'dark' && currents === 1`)
	}
	consumers := g.kvConsumers("cfg")
	if n := consumers.count(); n != 2 {
		t.Fatalf("%d consumers for two watches", n)
	}

	rev := eval[float64](a, `nc.kv('cfg').put('ui.theme', 'light', { revision: 1 })`)
	if rev != 3 {
		t.Fatalf("put with the expected revision: revision %v, want 3", rev)
	}
	bb.waitJS("b to see a's write", `seen.length === 2 && seen[1].rev === 3 && seen[1].data === 'light'`)
	stale := eval[map[string]any](bb, `nc.kv('cfg').put('ui.theme', 'blue', { revision: 1 }).then(
		(r) => ({ resolved: r }), (e) => ({ status: e.status, kind: e.kind }))`)
	if stale["status"] != float64(412) || stale["kind"] != "precondition-failed" {
		t.Fatalf("a put with a stale revision: %v, want rejected with 412", stale)
	}
	// A write the watches do see proves the stale one was not missed in transit.
	g.http("PUT", "/v1/kv/cfg/ui.theme", "after", 200) // 4
	for name, p := range pages {
		p.waitJS(name+" to see the write after the refused one", `seen.length === 3 && seen[2].rev === 4`)
		if s := eval[string](p, `JSON.stringify(seen)`); strings.Contains(s, "blue") || strings.Contains(s, "noise") {
			t.Fatalf("%s saw %s", name, s)
		}
	}

	// The gateway goes away; writes land meanwhile (straight to NATS); the
	// pages come back.
	g.stopHTTP()
	for name, p := range pages {
		p.waitJS(name+" to notice the gateway went", `nc.state !== 'connected'`)
	}
	kv := g.nativeKV("cfg")
	if _, err := kv.Put(context.Background(), "ui.theme", []byte("while away")); err != nil { // 5
		t.Fatal(err)
	}
	if err := kv.Delete(context.Background(), "ui.theme"); err != nil { // 6
		t.Fatal(err)
	}
	g.serveAgain()
	for name, p := range pages {
		p.waitJS(name+" to see what was written while it was away", `seen.length === 5 && seen[3].rev === 5 && seen[3].data === 'while away' && seen[4].op === 'DEL'`)
		resumed := eval[[]any](p, `sent_.filter(f => f.op === 'watch').map(f => f.resumeRevision ?? null)`)
		if fmt.Sprint(resumed) != "[<nil> 5]" {
			t.Fatalf("%s sent watch frames with resumeRevision %v, want none then 5", name, resumed)
		}
		p.waitJS(name+" to be told current again", `currents === 2`)
	}
	eval[bool](a, `nc.kv('cfg').put('ui.theme', 'back', { revision: 6 }).then(() => true)`) // 7: 6 was the delete
	for name, p := range pages {
		p.waitJS(name+" to see the write after the resume", `seen.length === 6 && seen[5].rev === 7`)
		if s := eval[string](p, `JSON.stringify(seen.map(e => e.rev))`); s != "[1,3,4,5,6,7]" {
			t.Fatalf("%s saw revisions %s, want each once, in order", name, s)
		}
	}
	for _, p := range pages {
		eval[bool](p, `stopWatch().then(() => true)`)
	}
	deadline := time.Now().Add(10 * time.Second)
	for consumers.count() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d consumers left after both watches stopped", consumers.count())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestConsoleKVPanel: the console opens a bucket and lists its keys,
// loads a key with the revision a put will expect, stores an edit, shows
// a change made elsewhere live, and refuses a put over it with 412.
func TestConsoleKVPanel(t *testing.T) {
	g := startKVGateway(t)
	g.http("PUT", "/v1/kv/cfg/ui.theme", "dark", 200) // 1
	g.http("PUT", "/v1/kv/cfg/ui.font", "mono", 200)  // 2
	b := newBrowser(t)
	b.openConsole(g)
	b.connect(adminToken)
	b.do("opening the bucket", chromedp.SetValue(chromedp.ID("kv-bucket"), "cfg"), chromedp.Click(chromedp.ID("kv-open")))
	b.waitJS("the keys listed", `[...document.querySelectorAll('#kv-keys li')].map(li => li.dataset.key).join() === 'ui.font,ui.theme'`)
	b.waitJS("the watch current", `document.getElementById('kv-watching').textContent.includes('watching')`)
	b.do("picking ui.theme", chromedp.Click(`#kv-keys li[data-key="ui.theme"] button`))
	b.waitJS("ui.theme loaded at rev 1", `document.getElementById('kv-value').value === 'dark' && document.getElementById('kv-expected').dataset.revision === '1'`)

	b.do("editing and putting", chromedp.SetValue(chromedp.ID("kv-value"), "light"), chromedp.Click(chromedp.ID("kv-put")))
	b.waitJS("the put stored as rev 3", `document.getElementById('kv-result').dataset.status === '200' && document.getElementById('kv-expected').dataset.revision === '3'`)
	b.waitJS("the current value shown live at rev 3", `document.getElementById('kv-current').dataset.revision === '3' && document.getElementById('kv-current').textContent.includes('light')`)
	if v := g.http("GET", "/v1/kv/cfg/ui.theme", "", 200); v != "light" {
		t.Fatalf("ui.theme is %q after the console's put", v)
	}

	// Someone else writes: the panel shows it live; a put still expecting 3 is refused.
	g.http("PUT", "/v1/kv/cfg/ui.theme", "from elsewhere", 200) // 4
	g.http("PUT", "/v1/kv/cfg/ui.new", "n", 200)                // 5
	b.waitJS("the change elsewhere shown live", `document.getElementById('kv-current').dataset.revision === '4' && document.getElementById('kv-current').textContent.includes('from elsewhere')`)
	b.waitJS("the new key listed", `!!document.querySelector('#kv-keys li[data-key="ui.new"]')`)
	b.do("putting over a stale revision", chromedp.SetValue(chromedp.ID("kv-value"), "mine"), chromedp.Click(chromedp.ID("kv-put")))
	b.waitJS("412 shown", `document.getElementById('kv-result').dataset.status === '412' && document.getElementById('errors').innerText.includes('412')`)
	if v := g.http("GET", "/v1/kv/cfg/ui.theme", "", 200); v != "from elsewhere" {
		t.Fatalf("ui.theme is %q after a refused put", v)
	}
	// Picking the key again loads the new revision; the put then goes through.
	b.do("picking ui.theme again", chromedp.Click(`#kv-keys li[data-key="ui.theme"] button`))
	b.waitJS("ui.theme loaded at rev 4", `document.getElementById('kv-expected').dataset.revision === '4'`)
	b.do("putting again", chromedp.SetValue(chromedp.ID("kv-value"), "mine"), chromedp.Click(chromedp.ID("kv-put")))
	b.waitJS("the put stored as rev 6", `document.getElementById('kv-result').dataset.status === '200' && document.getElementById('kv-expected').dataset.revision === '6'`)
	// Deleting removes the key from the list.
	b.do("deleting", chromedp.Click(chromedp.ID("kv-delete")))
	b.waitJS("ui.theme gone from the list", `!document.querySelector('#kv-keys li[data-key="ui.theme"]') && document.getElementById('kv-result').dataset.status === '204'`)
}
