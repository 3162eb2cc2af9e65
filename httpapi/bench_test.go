package httpapi

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkPublishHandler measures the gateway's work for one confirmed
// publish, without the network: the handler chain, NATS publish and the
// shared confirmation round trip. Compare allocs/op and ns/op between
// versions with benchstat. 32 goroutines per core, as under wrk's 64
// connections, share the round trips, so ns/op is CPU, not latency.
func BenchmarkPublishHandler(b *testing.B) {
	g := startGateway(b)
	body := []byte("0123456789abcdef")
	b.ReportAllocs()
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := httptest.NewRequest("POST", "/v1/publish/bench", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+adminToken)
			w := httptest.NewRecorder()
			g.api.ServeHTTP(w, req)
			if w.Code != http.StatusNoContent {
				b.Fatalf("status %d: %s", w.Code, w.Body)
			}
		}
	})
}

// BenchmarkPublishBatchHandler measures a batch of 1,000 entries of
// 16 B, as gateway-bench's batch row sends them, without the network:
// reading and decoding the entries, publishing them and the one
// confirmation round trip.
func BenchmarkPublishBatchHandler(b *testing.B) {
	g := startGateway(b)
	body := bytes.Join(batchBody(1000), []byte("\n"))
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest("POST", "/v1/publish", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+adminToken)
		req.Header.Set("Content-Type", "application/x-ndjson")
		w := httptest.NewRecorder()
		g.api.ServeHTTP(w, req)
		if w.Code != http.StatusNoContent {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
}

// BenchmarkStoredPublishHandler measures one stored publish, without the
// network: the handler chain, the publish with its ack inbox and the
// stream's acknowledgement (the embedded server's JetStream work, memory
// storage, included).
func BenchmarkStoredPublishHandler(b *testing.B) {
	g := startGateway(b, withJetStream)
	req := httptest.NewRequest("PUT", "/v1/streams/BENCH", bytes.NewReader([]byte(`{"subjects":["bench.>"],"storage":"memory","max_msgs":100000}`)))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	w := httptest.NewRecorder()
	g.api.ServeHTTP(w, req)
	if w.Code != http.StatusCreated {
		b.Fatalf("stream: %d %s", w.Code, w.Body)
	}
	body := []byte("0123456789abcdef")
	b.ReportAllocs()
	b.SetParallelism(32) // each waits for its ack: keep the server busy
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := httptest.NewRequest("POST", "/v1/js/publish/bench.x", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+adminToken)
			w := httptest.NewRecorder()
			g.api.ServeHTTP(w, req)
			if w.Code != http.StatusOK {
				b.Fatalf("status %d: %s", w.Code, w.Body)
			}
		}
	})
}
