package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/natsgate/natsgate/internal/gatewayproc"
)

// call sends a request with a bearer token and returns status and body.
func call(t *testing.T, method, url, token, body string, hdr ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// storeOne creates stream ORDERS (when create) and stores one message,
// returning the acknowledgement.
func storeOne(t *testing.T, s *started, token string, create bool) string {
	t.Helper()
	if create {
		if code, body := call(t, "PUT", s.base+"/v1/streams/ORDERS", token, `{"subjects":["orders.>"]}`); code != 201 {
			t.Fatalf("create stream: %d %s", code, body)
		}
	}
	code, body := call(t, "POST", s.base+"/v1/js/publish/orders.eu", token, "hello")
	if code != 200 {
		t.Fatalf("stored publish: %d %s", code, body)
	}
	return strings.TrimSpace(body)
}

func wantJetStreamUnavailable(t *testing.T, s *started, token string) {
	t.Helper()
	for _, r := range [][2]string{{"PUT", "/v1/streams/ORDERS"}, {"POST", "/v1/js/publish/orders.eu"}} {
		code, body := call(t, r[0], s.base+r[1], token, `{}`)
		if code != 503 || !strings.Contains(body, "jetstream-unavailable") {
			t.Fatalf("%s %s without JetStream: %d %s", r[0], r[1], code, body)
		}
	}
}

var storeDirRe = regexp.MustCompile(`JetStream keeps streams in (\S+), a temporary directory`)

func TestJetStreamIsOnByDefaultInATemporaryStoreDir(t *testing.T) {
	s := start(t, nil, "--token", "t")
	m := storeDirRe.FindStringSubmatch(s.stdout.String())
	if m == nil {
		t.Fatalf("the temporary store directory is not printed:\n%s", s.stdout)
	}
	dir := m[1]
	if !strings.HasPrefix(dir, os.TempDir()) {
		t.Fatalf("store directory %s is not under %s", dir, os.TempDir())
	}
	if !strings.Contains(s.stderr.String(), "store_dir="+dir) {
		t.Fatalf("the store directory is not logged:\n%s", s.stderr)
	}
	if ack := storeOne(t, s, "t", true); ack != `{"stream":"ORDERS","seq":1,"duplicate":false}` {
		t.Fatalf("ack %s", ack)
	}
	if _, err := os.Stat(filepath.Join(dir, "jetstream")); err != nil {
		t.Fatalf("nothing stored in %s: %v", dir, err)
	}
	if err := s.stop(t); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the gateway's own temporary store %s is still there after exit (%v)", dir, err)
	}
}

func TestJetStreamOffAnswers503(t *testing.T) {
	for name, run := range map[string]func() *started{
		"flag": func() *started { return start(t, nil, "--token", "t", "--jetstream=false") },
		"env":  func() *started { return start(t, map[string]string{"GATEWAY_JETSTREAM": "false"}, "--token", "t") },
	} {
		t.Run(name, func(t *testing.T) {
			s := run()
			wantJetStreamUnavailable(t, s, "t")
			if storeDirRe.MatchString(s.stdout.String()) {
				t.Fatalf("a store directory was made without JetStream:\n%s", s.stdout)
			}
		})
	}
}

func TestStoreDirKeepsStreamsAcrossRestarts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	s := start(t, map[string]string{"GATEWAY_STORE_DIR": dir}, "--token", "t")
	storeOne(t, s, "t", true)
	if storeDirRe.MatchString(s.stdout.String()) {
		t.Fatalf("a temporary store was announced although GATEWAY_STORE_DIR was set:\n%s", s.stdout)
	}
	if err := s.stop(t); err != nil {
		t.Fatal(err)
	}
	s = start(t, nil, "--token", "t", "--store-dir", dir)
	if ack := storeOne(t, s, "t", false); ack != `{"stream":"ORDERS","seq":2,"duplicate":false}` {
		t.Fatalf("after a restart on the same --store-dir: %s, want seq 2", ack)
	}
	code, body := call(t, "GET", s.base+"/v1/streams/ORDERS", "t", "")
	var info struct {
		State struct {
			Messages int `json:"messages"`
		} `json:"state"`
	}
	if json.Unmarshal([]byte(body), &info); code != 200 || info.State.Messages != 2 {
		t.Fatalf("stream info %d %s", code, body)
	}
	if err := s.stop(t); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("--store-dir was removed at exit: %v", err)
	}
}

func TestNatsConfigJetStreamBlockRules(t *testing.T) {
	dir := t.TempDir()
	with := filepath.Join(dir, "with.conf")
	without := filepath.Join(dir, "without.conf")
	store := filepath.Join(dir, "store")
	os.WriteFile(with, []byte("listen: 127.0.0.1:-1\njetstream {\n  store_dir: \""+store+"\"\n}\n"), 0o600)
	os.WriteFile(without, []byte("listen: 127.0.0.1:-1\n"), 0o600)

	s := start(t, nil, "--token", "t", "--nats-config", with)
	storeOne(t, s, "t", true)
	if _, err := os.Stat(filepath.Join(store, "jetstream")); err != nil {
		t.Fatalf("the config file's store_dir is not used: %v", err)
	}
	if storeDirRe.MatchString(s.stdout.String()) {
		t.Fatalf("a temporary store was made although the config file has its own:\n%s", s.stdout)
	}
	s.stop(t)

	s = start(t, nil, "--token", "t", "--nats-config", without)
	wantJetStreamUnavailable(t, s, "t")
}

func TestJetStreamFlagsWhereTheyWouldBeIgnoredAreErrors(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "n.conf")
	os.WriteFile(conf, []byte("listen: 127.0.0.1:-1\n"), 0o600)
	for _, args := range [][]string{
		{"--nats-url", "nats://127.0.0.1:1", "--store-dir", t.TempDir()},
		{"--nats-url", "nats://127.0.0.1:1", "--jetstream=false"},
		{"--nats-config", conf, "--store-dir", t.TempDir()},
		{"--nats-config", conf, "--jetstream=true"},
		{"--jetstream=false", "--store-dir", t.TempDir()},
	} {
		err := run(context.Background(), append([]string{"--listen", "127.0.0.1:0", "--nats-listen", "off", "--token", "t"}, args...),
			func(string) string { return "" }, io.Discard, io.Discard)
		if err == nil {
			t.Errorf("%v: no error", args)
		}
	}
	var out gatewayproc.LogBuffer
	if err := run(context.Background(), []string{"--help"}, func(string) string { return "" }, &out, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--jetstream", "GATEWAY_JETSTREAM", "--store-dir", "GATEWAY_STORE_DIR", "--js-max-inflight", "GATEWAY_JS_MAX_INFLIGHT"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help does not mention %s", want)
		}
	}
}
