package httpapi

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestMetricsCountAKnownLoad runs a known load and scrapes /metrics.
func TestMetricsCountAKnownLoad(t *testing.T) {
	t.Parallel()
	g := startGateway(t, func(o *gatewayOptions) { o.cfg.AuthFailureLimit = -1 })
	const pubs, bad, wrong = 25, 4, 3
	for i := range pubs {
		if r, _ := g.do("POST", fmt.Sprintf("/v1/publish/m.%d", i), adminToken, strings.NewReader("x")); r.StatusCode != 204 {
			t.Fatalf("publish: %d", r.StatusCode)
		}
	}
	for range bad {
		g.do("POST", "/v1/publish/bad..subject", adminToken, nil)
	}
	for range wrong {
		g.do("POST", "/v1/publish/x", "wrong-token", nil)
	}
	g.do("POST", "/v1/publish/x", "", nil)
	g.do("POST", "/v1/publish/x?token=t", "", nil)
	batch := "{\"subject\":\"b.1\",\"data\":\"1\"}\n{\"subject\":\"b.2\",\"data\":\"2\"}\n{\"subject\":\"b..bad\"}\n"
	if r, _ := g.do("POST", "/v1/publish", adminToken, strings.NewReader(batch), "Content-Type", "application/x-ndjson"); r.StatusCode != 207 {
		t.Fatalf("batch: %d", r.StatusCode)
	}

	// Two streams and three sessions open, with subscriptions; messages out.
	s1 := g.stream("/v1/subscribe/live.>", adminToken, "")
	s2 := g.stream("/v1/subscribe/live.>", adminToken, "application/x-ndjson")
	var sessions []*wsClient
	for i := range 3 {
		w := g.dialWS(adminToken)
		w.next("connected")
		w.send(map[string]any{"op": "sub", "sid": "a", "subject": "live.>"})
		w.next("ok")
		if i == 0 {
			w.send(map[string]any{"op": "sub", "sid": "b", "subject": "other"})
			w.next("ok")
		}
		sessions = append(sessions, w)
	}
	g.do("POST", "/v1/publish/live.1", adminToken, strings.NewReader("hi"))
	s1.next(t, isData)
	s2.next(t, func(l string) bool { return strings.Contains(l, "live.1") })
	for _, w := range sessions {
		w.next("msg")
	}
	sessions[0].send(map[string]any{"op": "pub", "subject": "live.ws", "id": "p"})

	want := map[string]float64{
		`natsgate_http_requests_total{method="POST",route="/v1/publish/{subject}",status="204"}`: pubs + 1,
		`natsgate_http_requests_total{method="POST",route="/v1/publish/{subject}",status="400"}`: bad,
		`natsgate_http_requests_total{method="POST",route="/v1/publish/{subject}",status="401"}`: wrong + 1,
		`natsgate_http_requests_total{method="POST",route="/v1/publish",status="207"}`:           1,
		`natsgate_auth_failures_total{reason="rejected"}`:                                        wrong,
		`natsgate_auth_failures_total{reason="missing"}`:                                         1,
		`natsgate_auth_failures_total{reason="token_in_url"}`:                                    1,
		`natsgate_messages_in_total{transport="http"}`:                                           pubs + 1 + 2,
		`natsgate_messages_in_total{transport="ws"}`:                                             1,
		`natsgate_open_streams{transport="ws"}`:                                                  3,
		`natsgate_open_streams{transport="sse"}`:                                                 1,
		`natsgate_open_streams{transport="ndjson"}`:                                              1,
		`natsgate_subscriptions`:                                                                 3 + 1 + 2,
		`natsgate_messages_out_total{transport="ws"}`:                                            3 + 1,
		`natsgate_messages_out_total{transport="sse"}`:                                           1,
		`natsgate_messages_out_total{transport="ndjson"}`:                                        1,
		`natsgate_nats_connections`:                                                              1,
	}
	// The session's own publish to live.ws also reaches the three sessions
	// (its ok and its msg in either order) and two streams; wait for it
	// before counting.
	for seen := map[any]bool{}; !seen["ok"] || !seen["msg"]; {
		select {
		case f := <-sessions[0].frames:
			seen[f["op"]] = true
		case <-time.After(5 * time.Second):
			t.Fatal("no ok and msg for the session's publish")
		}
	}
	for _, w := range sessions[1:] {
		w.next("msg")
	}
	s1.next(t, isData)
	s2.next(t, func(l string) bool { return strings.Contains(l, "live.ws") })
	want[`natsgate_messages_out_total{transport="ws"}`] = 6
	want[`natsgate_messages_out_total{transport="sse"}`] = 2
	want[`natsgate_messages_out_total{transport="ndjson"}`] = 2
	for series, v := range want {
		if got := metricValue(t, g, series); got != v {
			t.Errorf("%s = %v, want %v", series, got, v)
		}
	}
	if got := metricValue(t, g, `natsgate_http_request_duration_seconds_count{method="POST",route="/v1/publish/{subject}"}`); got != pubs+bad+wrong+1+1 { // the URL-token request is refused before routing
		t.Errorf("latency histogram count %v", got)
	}

	// Everything closes: the gauges come back to zero.
	s1.close()
	s2.close()
	for _, w := range sessions {
		w.c.Close(websocket.StatusNormalClosure, "")
	}
	waitFor(t, "gauges to drop", func() bool {
		return metricValue(t, g, `natsgate_open_streams{transport="ws"}`) == 0 &&
			metricValue(t, g, `natsgate_open_streams{transport="sse"}`) == 0 &&
			metricValue(t, g, `natsgate_subscriptions`) == 0
	})
}
