package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestWrkLoad runs the generated script in wrk against a loopback server
// that answers every fifth request with an API error in a 200 (as
// Centrifugo does): those count as errors, the rest as operations, and
// the request's method, headers and body are the ones asked for.
func TestWrkLoad(t *testing.T) {
	bin, err := exec.LookPath("wrk")
	if err != nil {
		if os.Getenv("NATSGATE_REQUIRE_WRK") != "" {
			t.Fatal("wrk not installed, and NATSGATE_REQUIRE_WRK is set (Debian: apt-get install wrk)")
		}
		t.Skip("wrk not installed")
	}
	var served, bad atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 64)
		n, _ := r.Body.Read(buf)
		if r.Method != http.MethodPost || r.Header.Get("X-API-Key") != `k"ey` || string(buf[:n]) != `{"channel":"bench","data":"x"}` {
			bad.Add(1)
		}
		if served.Add(1)%5 == 0 {
			_, _ = w.Write([]byte(`{"error":{"code":102,"message":"unknown channel"}}`))
			return
		}
		_, _ = w.Write([]byte(`{"result":{}}`))
	}))
	defer srv.Close()
	w := &wrkLoad{bin: bin, dir: t.TempDir(), url: srv.URL + "/api/publish", conns: 4, want: http.StatusOK, reject: `"error"`,
		headers: map[string]string{"X-API-Key": `k"ey`}, body: []byte(`{"channel":"bench","data":"x"}`)}
	tl, err := w.run(context.Background(), 500*time.Millisecond) // wrk's whole second
	if err != nil {
		t.Fatal(err)
	}
	if bad.Load() != 0 {
		t.Fatalf("%d requests were not the ones asked for", bad.Load())
	}
	total := tl.ops + tl.errs
	if tl.ops == 0 || total > served.Load() || tl.elapsed < 900*time.Millisecond || len(tl.lat) != 1000 || tl.cpu.loader <= 0 {
		t.Fatalf("ops %d errs %d of %d served, elapsed %s, %d quantiles, wrk CPU %s", tl.ops, tl.errs, served.Load(), tl.elapsed, len(tl.lat), tl.cpu.loader)
	}
	if share := float64(tl.errs) / float64(total); share < 0.15 || share > 0.25 {
		t.Fatalf("%d errors of %d responses, want a fifth", tl.errs, total)
	}
	if !strings.HasPrefix(tl.firstErr, "status 200: {\"error\"") {
		t.Fatalf("firstErr %q", tl.firstErr)
	}
}
