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
// versions with benchstat.
func BenchmarkPublishHandler(b *testing.B) {
	g := startGateway(b)
	body := []byte("0123456789abcdef")
	b.ReportAllocs()
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
