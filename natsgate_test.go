package natsgate_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/natsgate/natsgate"
)

// TestMain fails the package if Close leaves a goroutine behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestMountedUnderAPrefix: every route answers under the prefix, the
// gateway's own errors too, and the application's routes are untouched.
func TestMountedUnderAPrefix(t *testing.T) {
	gw, err := natsgate.New(natsgate.Options{Tokens: []natsgate.Token{{Name: "app", Token: "s3cret"}}})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "the app") })
	mux.Handle("/nats/", http.StripPrefix("/nats", gw))
	srv := httptest.NewServer(mux)
	defer func() {
		gw.Shutdown()
		srv.Close()
		if err := gw.Close(context.Background()); err != nil {
			t.Error(err)
		}
	}()
	for _, tc := range []struct {
		method, path string
		status       int
		contains     string
	}{
		{"GET", "/", 200, "the app"},
		{"GET", "/nats/healthz", 200, "ok"},
		{"GET", "/nats/readyz", 200, "ready"},
		{"HEAD", "/nats/readyz", 200, ""},
		{"GET", "/nats/openapi.yaml", 200, "openapi:"},
		{"GET", "/nats/client.js", 200, "export"},
		{"GET", "/nats/", 200, "natsgate"},
		{"POST", "/nats/v1/publish/x", 204, ""},
		{"POST", "/nats/v1/publish/", 400, "the subject is empty"},
		{"GET", "/nats/v1/publish/x", 405, "POST"},
		{"GET", "/nats/v1/nothing", 404, "no such route"},
		{"POST", "/nats/v1/publish/x?token=s3cret", 400, "token-in-url"},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
		req.Header.Set("Authorization", "Bearer s3cret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(b), tc.contains) {
			t.Errorf("%s %s: %d %.80q, want %d containing %q", tc.method, tc.path, resp.StatusCode, b, tc.status, tc.contains)
		}
	}
}

func TestNewNeedsTokensForTheEmbeddedServer(t *testing.T) {
	if _, err := natsgate.New(natsgate.Options{}); err == nil {
		t.Fatal("an embedded server without tokens was started")
	}
}
