package httpapi

import (
	"encoding/base64"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func TestNATSSubjectsPublishReachesANativeSubscriber(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	sub := g.nativeSub("orders.eu")
	resp, body := g.do("PUT", "/v1/nats/subjects/orders.eu?reply=orders.answers", adminToken, strings.NewReader("hello"), "NatsH-Trace", "7")
	if resp.StatusCode != 204 {
		t.Fatalf("status %d %s", resp.StatusCode, body)
	}
	m, err := sub.NextMsg(2 * time.Second)
	if err != nil || string(m.Data) != "hello" || m.Reply != "orders.answers" || m.Header.Get("Trace") != "7" {
		t.Fatalf("native got %+v, %v", m, err)
	}
	// Same rules as /v1/publish.
	resp, body = g.do("PUT", "/v1/nats/subjects/a.*", adminToken, nil)
	wantKind(t, resp, body, 400, "bad-subject")
	resp, body = g.do("PUT", "/v1/nats/subjects/secret", ordersToken, nil)
	wantKind(t, resp, body, 403, "forbidden")
}

func TestNATSSubjectsRequestAnswersJSONOrRaw(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	nc := g.native(adminToken)
	if _, err := nc.Subscribe("svc.echo", func(m *nats.Msg) {
		r := nats.NewMsg(m.Reply)
		r.Data = append([]byte{0xff}, m.Data...)
		r.Header.Set("A", "1")
		r.Header.Add("A", "2")
		_ = m.RespondMsg(r)
	}); err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	resp, body := g.do("POST", "/v1/nats/subjects/svc.echo?timeout=2000", adminToken, strings.NewReader("ping"), "Accept", "application/json")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d %s", resp.StatusCode, body)
	}
	var m struct {
		Subject string              `json:"subject"`
		Reply   *string             `json:"reply"`
		Header  map[string][]string `json:"header"`
		Data    string              `json:"data"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	data, err := base64.StdEncoding.DecodeString(m.Data)
	if err != nil || string(data) != "\xffping" || !strings.HasPrefix(m.Subject, "_INBOX.") || m.Reply != nil ||
		!slices.Equal(m.Header["A"], []string{"1", "2"}) {
		t.Fatalf("JSON reply %s", body)
	}
	resp, body = g.do("POST", "/v1/nats/subjects/svc.echo", adminToken, strings.NewReader("raw"))
	if resp.StatusCode != 200 || string(body) != "\xffraw" || resp.Header.Values("NatsH-A")[1] != "2" {
		t.Fatalf("raw reply %d %q %v", resp.StatusCode, body, resp.Header)
	}
	resp, body = g.do("POST", "/v1/nats/subjects/svc.nobody?timeout=500", adminToken, nil, "Accept", "application/json")
	wantKind(t, resp, body, 503, "no-responders")
}

func TestNATSSubjectsSubscribeSendsEventsNamedMsg(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	s := g.stream("/v1/nats/subjects/orders.*", adminToken, "")
	if s.resp.StatusCode != 200 || s.resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d, Content-Type %q", s.resp.StatusCode, s.resp.Header.Get("Content-Type"))
	}
	s.next(t, func(l string) bool { return l == ": subscribed" })
	nc := g.native(adminToken)
	m := nats.NewMsg("orders.eu")
	m.Data, m.Reply = []byte("hello"), "r.1"
	m.Header.Set("Trace", "1")
	nc.PublishMsg(m)
	nc.Publish("orders.bin", []byte{0xff, 0})
	nc.Flush()
	for _, want := range []string{
		`{"subject":"orders.eu","reply":"r.1","header":{"Trace":["1"]},"data":"aGVsbG8="}`,
		`{"subject":"orders.bin","data":"/wA="}`,
	} {
		if got := s.next(t, func(l string) bool { return l != "" }); got != "event: msg" {
			t.Fatalf("got %q, want the event line", got)
		}
		if got := s.next(t, func(string) bool { return true }); got != "data: "+want {
			t.Fatalf("got %q, want data: %s", got, want)
		}
	}
	// Queue groups as on /v1/subscribe.
	q := g.stream("/v1/nats/subjects/jobs?queue=workers", adminToken, "")
	if q.resp.StatusCode != 200 {
		t.Fatalf("queue: %d", q.resp.StatusCode)
	}
}
