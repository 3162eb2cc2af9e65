package httpapi

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the gateway's Prometheus metrics. Labels are routes, methods,
// statuses, transports and reasons: never tokens or subjects.
type Metrics struct {
	reg           *prometheus.Registry
	requests      *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	sessions      *prometheus.GaugeVec
	subscriptions prometheus.Gauge
	msgsIn        *prometheus.CounterVec
	msgsOut       *prometheus.CounterVec
	dropped       *prometheus.CounterVec
	slowClosed    *prometheus.CounterVec
	authFailures  *prometheus.CounterVec
	stored        *prometheus.CounterVec
	streamOps     *prometheus.CounterVec
	kvOps         *prometheus.CounterVec

	jsSubscriptions    prometheus.Gauge
	jsConsumersCreated prometheus.Counter
	jsConsumersRemoved prometheus.Counter
	jsPacedWaits       prometheus.Counter

	// series caches request series by reqKey. Keys are bounded: routes
	// are the router's patterns (or "unmatched"), methods and statuses
	// are few.
	series sync.Map
}

func newMetrics(b Broker) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "natsgate_http_requests_total", Help: "HTTP requests by route, method and status.",
		}, []string{"route", "method", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "natsgate_http_request_duration_seconds",
			Help:    "HTTP request latency by route and method (streams: their whole life).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"route", "method"}),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "natsgate_open_streams", Help: "Open WebSocket sessions and SSE/NDJSON streams.",
		}, []string{"transport"}),
		subscriptions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "natsgate_subscriptions", Help: "Active subscriptions of clients (WebSocket and streams).",
		}),
		msgsIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "natsgate_messages_in_total", Help: "Messages clients published into NATS (confirmed or sent), by transport.",
		}, []string{"transport"}),
		msgsOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "natsgate_messages_out_total", Help: "Messages written to clients, by transport.",
		}, []string{"transport"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "natsgate_messages_dropped_total", Help: "Messages dropped because a client's outbound queue was full, by transport.",
		}, []string{"transport"}),
		slowClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "natsgate_slow_consumers_closed_total", Help: "Clients closed for staying behind their outbound bound, by transport.",
		}, []string{"transport"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "natsgate_auth_failures_total", Help: "Failed authentications by reason.",
		}, []string{"reason"}),
		stored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "natsgate_stored_publishes_total",
			Help: "Stored (JetStream) publishes by the status each got: one per message of POST /v1/js/publish/{subject}, one per entry of a POST /v1/js/publish batch.",
		}, []string{"status"}),
		streamOps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "natsgate_stream_operations_total",
			Help: "Stream management operations (op: put, get, list, delete) by status.",
		}, []string{"op", "status"}),
		kvOps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "natsgate_kv_operations_total", Help: "Key-value operations by kind (get, put, update, create, delete, purge, keys, bucket_*) and HTTP status.",
		}, []string{"op", "status"}),
		jsSubscriptions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "natsgate_jetstream_subscriptions", Help: "Open JetStream subscriptions of clients (WebSocket and streams), each with a consumer.",
		}),
		jsConsumersCreated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "natsgate_jetstream_consumers_created_total", Help: "JetStream consumers created for client subscriptions.",
		}),
		jsConsumersRemoved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "natsgate_jetstream_consumers_removed_total", Help: "JetStream consumers removed when their subscription ended.",
		}),
		jsPacedWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "natsgate_jetstream_paced_waits_total", Help: "Times a JetStream subscription waited for its client's queue to drain before pulling more.",
		}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.sessions, m.subscriptions, m.msgsIn, m.msgsOut, m.dropped,
		m.slowClosed, m.authFailures, m.stored, m.streamOps, m.kvOps,
		m.jsSubscriptions, m.jsConsumersCreated, m.jsConsumersRemoved, m.jsPacedWaits,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "natsgate_nats_connections", Help: "NATS connections held by the gateway (one per distinct token).",
		}, func() float64 { return float64(b.Stats().Conns) }),
	)
	return m
}

// reqKey identifies a request's metric series.
type reqKey struct {
	route, method string
	status        int
}

type reqSeries struct {
	count   prometheus.Counter
	latency prometheus.Observer
}

func (m *Metrics) observeRequest(method, route string, status int, d time.Duration) {
	switch method {
	case http.MethodGet, http.MethodPost, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete, http.MethodPatch:
	default:
		method = "OTHER" // clients choose methods; labels must stay bounded
	}
	k := reqKey{route, method, status}
	s, ok := m.series.Load(k)
	if !ok { // first request of its kind: look the series up once
		s, _ = m.series.LoadOrStore(k, &reqSeries{
			count:   m.requests.WithLabelValues(route, method, strconv.Itoa(status)),
			latency: m.latency.WithLabelValues(route, method),
		})
	}
	rs := s.(*reqSeries)
	rs.count.Inc()
	rs.latency.Observe(d.Seconds())
}

func (m *Metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
