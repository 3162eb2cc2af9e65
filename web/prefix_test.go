package web_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/natsgate/natsgate"
)

// TestClientUnderAPrefix: a Go app mounts the gateway under /nats/; the
// browser loads /nats/client.js and gives connect and subscribeStream the
// prefix as their url.
func TestClientUnderAPrefix(t *testing.T) {
	srv := underPrefix(t)
	b := newBrowser(t)
	b.do("loading the app page", chromedp.Navigate(srv.URL+"/app"))
	for _, url := range []string{"/nats", "/nats/", srv.URL + "/nats"} {
		got := eval[map[string]any](b, `(async () => {
			const mod = await import('/nats/client.js');
			const nc = await mod.connect({ url: `+js(url)+`, token: `+js(adminToken)+` });
			let got;
			const seen = new Promise((r) => got = r);
			await nc.subscribe('prefix.ws', (m) => got(m.data));
			await nc.publish('prefix.ws', 'over ws');
			const wsData = await seen;
			const ctl = new AbortController();
			let streamed;
			const sseSeen = new Promise((r) => streamed = r);
			const done = mod.subscribeStream({ url: `+js(url)+`, token: `+js(adminToken)+`, subject: 'prefix.sse',
				signal: ctl.signal, onMessage: (m) => streamed(m.data),
				onOpen: () => nc.publish('prefix.sse', 'over sse') });
			const sseData = await sseSeen;
			ctl.abort();
			await done;
			const wsURL = nc.url;
			nc.close();
			return { wsData, sseData, wsURL };
		})()`)
		if got["wsData"] != "over ws" || got["sseData"] != "over sse" {
			t.Fatalf("url %q: %v", url, got)
		}
		if u, _ := got["wsURL"].(string); len(u) < 11 || u[len(u)-11:] != "/nats/v1/ws" {
			t.Fatalf("url %q: the client connected to %v, want …/nats/v1/ws", url, got["wsURL"])
		}
	}
}

// TestConsoleUnderAPrefix: the console page works where a Go app mounted
// the gateway: its script, style sheet and client come from under the
// prefix, and it connects there.
func TestConsoleUnderAPrefix(t *testing.T) {
	srv := underPrefix(t)
	b := newBrowser(t)
	b.openConsoleAt(srv.URL + "/nats/")
	b.connect(adminToken)
	b.subscribe("prefix.console")
	b.do("publishing", chromedp.SetValue(chromedp.ID("pub-subject"), "prefix.console"),
		chromedp.SetValue(chromedp.ID("pub-data"), "from the console"), chromedp.Click(chromedp.ID("pub-send")))
	b.waitLog("prefix.console", "from the console")
	if got := eval[string](b, `document.styleSheets.length > 0 && document.styleSheets[0].href`); got != srv.URL+"/nats/console.css" {
		t.Fatalf("style sheet %q, want it from under the prefix", got)
	}
}

// underPrefix serves a Go app that mounts the gateway under /nats/, with
// a page of its own at /app.
func underPrefix(t *testing.T) *httptest.Server {
	gw, err := natsgate.New(natsgate.Options{Tokens: testTokens()})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/app", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.Write([]byte("<!doctype html><title>app</title>"))
	})
	mux.Handle("/nats/", http.StripPrefix("/nats", gw))
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		gw.Shutdown()
		srv.Close()
		_ = gw.Close(context.Background())
	})
	return srv
}
