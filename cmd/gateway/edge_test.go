package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// problemOf sends a request and returns its status and problem detail.
func problemOf(t *testing.T, method, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var p struct{ Detail string }
	_ = json.Unmarshal(b, &p)
	return resp.StatusCode, p.Detail
}

func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestUnreachableNATSIsAWarningAndPublishSaysWhy(t *testing.T) {
	s := start(t, nil, "--nats-url", "nats://"+closedPort(t))
	warn := 0
	for _, l := range strings.Split(s.stderr.String(), "\n") {
		if strings.Contains(l, "level=WARN") && strings.Contains(l, "NATS unreachable") {
			warn++
		}
	}
	if warn != 1 {
		t.Fatalf("%d WARN lines about unreachable NATS at start-up, want 1:\n%s", warn, s.stderr)
	}
	code, ready := problemOf(t, "GET", s.base+"/readyz", "")
	if code != 503 || !strings.Contains(ready, "connection refused") {
		t.Fatalf("/readyz: %d %q", code, ready)
	}
	for _, path := range []string{"/v1/publish/x", "/v1/request/x"} {
		code, detail := problemOf(t, "POST", s.base+path, "any")
		if code != 503 || detail != ready {
			t.Errorf("POST %s: %d %q, want 503 with /readyz's cause %q", path, code, detail, ready)
		}
	}
}

// TestBusyNATSPortFailsAtOnce: a port already taken (a nats-server of
// the user's own, say) is an error naming the address and --nats-listen,
// at once, not after the embedded server's 10 s readiness wait.
func TestBusyNATSPortFailsAtOnce(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	addr := busy.Addr().String()
	begin := time.Now()
	err = run(context.Background(), []string{"--listen", "127.0.0.1:0", "--nats-listen", addr, "--token", "t"},
		func(string) string { return "" }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "--nats-listen") {
		t.Fatalf("busy NATS port: %v, want an error naming %s and --nats-listen", err, addr)
	}
	if d := time.Since(begin); d > 2*time.Second {
		t.Fatalf("busy NATS port reported after %v", d)
	}
}

func TestBannerCountsTokensAndNeverShowsThem(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tokens.json")
	if err := os.WriteFile(file, []byte(`{"tokens":[{"name":"a","token":"secret-a-123"},{"name":"b","token":"secret-b-456"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args    []string
		want    string
		secrets []string
	}{
		{[]string{"--token", "secret-only-789"}, "1 token loaded (--token)", []string{"secret-only-789"}},
		{[]string{"--tokens-file", file}, "2 tokens loaded (" + file + ")", []string{"secret-a-123", "secret-b-456"}},
	} {
		s := start(t, nil, tc.args...)
		out := s.stdout.String()
		if !strings.Contains(out, tc.want) || !strings.Contains(out, "export TOKEN=") {
			t.Errorf("%v: banner lacks %q:\n%s", tc.args, tc.want, out)
		}
		if !strings.Contains(s.stderr.String(), "tokens loaded") {
			t.Errorf("%v: no tokens loaded log line", tc.args)
		}
		for _, secret := range tc.secrets {
			if strings.Contains(out+s.stderr.String(), secret) {
				t.Errorf("%v: a token appears on stdout or in the log", tc.args)
			}
		}
		if tc.args[0] == "--tokens-file" && !strings.Contains(out, "kill -HUP "+strconv.Itoa(os.Getpid())) {
			t.Errorf("the banner does not say which pid to signal:\n%s", out)
		}
	}
}

// TestReadmeRequestExampleIsNoResponders follows the README's "Try it":
// with step 1's subscriber running, step 4's request finds no responder
// (503), as the README promises, rather than a subscriber that never
// answers (504).
func TestReadmeRequestExampleIsNoResponders(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	sub := regexp.MustCompile(`# 1\..*\n.*/v1/subscribe/([^'"\s]+)`).FindSubmatch(readme)
	req := regexp.MustCompile(`# 4\..*\n(?:#.*\n)*.*/v1/request/([^?'"\s]+)`).FindSubmatch(readme)
	if sub == nil || req == nil || !strings.Contains(string(readme), `503 "no responders"`) {
		t.Fatal("the README's Try it no longer has steps 1 (subscribe) and 4 (request, 503 no responders)")
	}
	s := start(t, nil, "--token", "t")
	stream, err := http.NewRequest("GET", s.base+"/v1/subscribe/"+string(sub[1]), nil)
	if err != nil {
		t.Fatal(err)
	}
	stream.Header.Set("Authorization", "Bearer t")
	resp, err := http.DefaultClient.Do(stream)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("step 1: %v %v", err, resp)
	}
	defer resp.Body.Close()
	code, detail := problemOf(t, "POST", s.base+"/v1/request/"+string(req[1])+"?timeout=2s", "t")
	if code != 503 || !strings.Contains(detail, "no responders") {
		t.Fatalf("step 4 (%s) with step 1 (%s) running: %d %q, want 503 no responders", req[1], sub[1], code, detail)
	}
}

func TestBrokenTokensFileNamesLineAndColumn(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tokens.json")
	if err := os.WriteFile(file, []byte("{\"tokens\":[\n  {\"name\":\"a\",\"token\":\"x\"},\n  {\"name\":\"b\" \"token\":\"y\"}\n]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := run(context.Background(), []string{"--listen", "127.0.0.1:0", "--nats-listen", "off", "--tokens-file", file},
		func(string) string { return "" }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "line 3, column 15") {
		t.Fatalf("broken tokens file: %v, want its line 3, column 15", err)
	}
}
