package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestScanCentrifugoFrame(t *testing.T) {
	for _, tc := range []struct {
		name               string
		frame              string
		pubs, pings, other int
		data               []string
	}{
		{"one publication", `{"push":{"channel":"bench","pub":{"data":"a"}}}`, 1, 0, 0, []string{`"a"`}},
		{"several per frame", "{\"push\":{\"channel\":\"bench\",\"pub\":{\"data\":\"a\"}}}\n{\"push\":{\"channel\":\"bench\",\"pub\":{\"data\":{\"k\":1},\"offset\":7}}}\n{\"push\":{\"channel\":\"bench\",\"pub\":{\"data\":\"c\"}}}", 3, 0, 0, []string{`"a"`, `{"k":1}`, `"c"`}},
		{"ping", `{}`, 0, 1, 0, nil},
		{"ping among publications", "{\"push\":{\"channel\":\"bench\",\"pub\":{\"data\":1}}}\n{}\n", 1, 1, 0, []string{`1`}},
		{"a channel with a quote and a comma", `{"push":{"channel":"a\",\"pub\":{b","pub":{"data":2}}}`, 1, 0, 0, []string{`2`}},
		{"not a publication: disconnect push", `{"push":{"channel":"","disconnect":{"code":3001,"reason":"shutdown"}}}`, 0, 0, 1, nil},
		{"not a publication: unsubscribe push", `{"push":{"channel":"bench","unsubscribe":{"code":2000}}}`, 0, 0, 1, nil},
		{"not a publication: a reply", `{"id":3,"error":{"code":103,"message":"permission denied"}}`, 0, 0, 1, nil},
		{"data that mentions pub is not a publication", `{"push":{"channel":"bench","join":{"info":{"x":"\"pub\":{"}}}}`, 0, 0, 1, nil},
		{"empty lines", "\n\n", 0, 0, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var other atomic.Int64
			var data []string
			pubs, pings := scanCentrifugoFrame([]byte(tc.frame), func(d json.RawMessage) { data = append(data, string(d)) }, &other)
			if pubs != tc.pubs || pings != tc.pings || other.Load() != int64(tc.other) {
				t.Fatalf("pubs %d pings %d other %d, want %d %d %d", pubs, pings, other.Load(), tc.pubs, tc.pings, tc.other)
			}
			if strings.Join(data, " ") != strings.Join(tc.data, " ") {
				t.Fatalf("data %q, want %q", data, tc.data)
			}
		})
	}
}

func TestCentrifugoJWT(t *testing.T) {
	c := &centrifugo{secret: []byte("s3cret")}
	tok := c.jwt("u42")
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("%d parts", len(parts))
	}
	m := hmac.New(sha256.New, []byte("s3cret"))
	m.Write([]byte(parts[0] + "." + parts[1]))
	if got := base64.RawURLEncoding.EncodeToString(m.Sum(nil)); got != parts[2] {
		t.Fatal("signature does not verify")
	}
	var hdr struct{ Alg, Typ string }
	var claims struct {
		Sub string
		Exp int64
	}
	for i, v := range []any{&hdr, &claims} {
		raw, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, v); err != nil {
			t.Fatal(err)
		}
	}
	if hdr.Alg != "HS256" || claims.Sub != "u42" || claims.Exp < time.Now().Add(50*time.Minute).Unix() {
		t.Fatalf("header %+v claims %+v", hdr, claims)
	}
}

func TestCentrifugoBatch(t *testing.T) {
	var b struct {
		Commands []struct {
			Publish struct{ Channel, Data string }
		}
	}
	if err := json.Unmarshal(centrifugoBatch(3, []byte(`ab"c`)), &b); err != nil {
		t.Fatal(err)
	}
	if len(b.Commands) != 3 || b.Commands[2].Publish.Channel != centrifugoChannel || b.Commands[2].Publish.Data != `ab"c` {
		t.Fatalf("%+v", b)
	}
}

// wrkOut is wrk's output with wrkScript's summary (latencies shortened to
// four quantiles).
const wrkOut = `Running 1s test @ http://127.0.0.1:1/v1/publish/bench
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.01ms    1.10ms  20.00ms   90.00%
  30000 requests in 1.00s, 2.00MB read
Requests/sec:  29950.00
Transfer/sec:      2.00MB
natsgate-bench requests 30000 duration_us 1001669 bad 2 connect 0 read 1 write 0 timeout 3
natsgate-bench first status 503: {"error":"too many tokens"}
natsgate-bench lat 900 1500 2000 9000
`

func TestParseWrk(t *testing.T) {
	tl, err := parseWrk(wrkOut)
	if err != nil {
		t.Fatal(err)
	}
	if tl.ops != 29998 || tl.msgs != 29998 || tl.errs != 6 {
		t.Fatalf("ops %d msgs %d errs %d", tl.ops, tl.msgs, tl.errs)
	}
	if tl.elapsed != 1001669*time.Microsecond {
		t.Fatalf("elapsed %s", tl.elapsed)
	}
	if !strings.Contains(tl.firstErr, "read 1") || !strings.Contains(tl.firstErr, "timeout 3") {
		t.Fatalf("firstErr %q: socket errors should come first", tl.firstErr)
	}
	if len(tl.lat) != 4 || tl.lat[3] != 9*time.Millisecond {
		t.Fatalf("lat %v", tl.lat)
	}

	clean := strings.Replace(wrkOut, "bad 2 connect 0 read 1 write 0 timeout 3", "bad 2 connect 0 read 0 write 0 timeout 0", 1)
	if tl, err = parseWrk(clean); err != nil || !strings.HasPrefix(tl.firstErr, "status 503") {
		t.Fatalf("firstErr %q, %v: want the first bad response", tl.firstErr, err)
	}

	for name, out := range map[string]string{
		"no summary":     "Running 1s test\nunable to connect to 127.0.0.1:1 Connection refused\n",
		"no latencies":   strings.Replace(wrkOut, "natsgate-bench lat", "lat", 1),
		"short summary":  strings.Replace(wrkOut, " timeout 3", "", 1),
		"not a number":   strings.Replace(wrkOut, "bad 2", "bad x", 1),
		"zero duration":  strings.Replace(wrkOut, "duration_us 1001669", "duration_us 0", 1),
		"bad a latency ": strings.Replace(wrkOut, "lat 900", "lat 9.5", 1),
	} {
		if _, err := parseWrk(out); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestLuaQuote(t *testing.T) {
	for in, want := range map[string]string{
		`plain`:               `"plain"`,
		`a"b\c`:               `"a\"b\\c"`,
		"tab\tnl\n\xff":       `"tab\009nl\010\255"`,
		`{"channel":"bench"}`: `"{\"channel\":\"bench\"}"`,
	} {
		if got := luaQuote(in); got != want {
			t.Errorf("luaQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

// TestSideBySideRotates checks that each slice starts with the next side
// and that every side's count is its own.
func TestSideBySideRotates(t *testing.T) {
	o := &options{duration: 30 * time.Millisecond, slices: 3, warmup: 5 * time.Millisecond}
	var (
		mu    sync.Mutex
		order []string
	)
	mk := func(id string) side {
		return side{ops: []op{func(context.Context) (int, error) {
			mu.Lock()
			if len(order) == 0 || order[len(order)-1] != id {
				order = append(order, id)
			}
			mu.Unlock()
			time.Sleep(time.Millisecond)
			return 1, nil
		}}}
	}
	ts, err := sideBySide(context.Background(), o, mk("a"), mk("b"), mk("c"))
	if err != nil {
		t.Fatal(err)
	}
	// Warm-up a b c, then slices a b c, b c a, c a b.
	if got, want := strings.Join(order, ""), "abc"+"abc"+"bca"+"cab"; got != want {
		t.Fatalf("order %s, want %s", got, want)
	}
	for i, tl := range ts {
		if tl.ops == 0 || tl.errs != 0 || tl.elapsed < 25*time.Millisecond || len(tl.lat) != int(tl.ops) {
			t.Fatalf("side %d: %+v", i, tl)
		}
	}
}

func TestBinDirOf(t *testing.T) {
	t.Setenv("HOME", "/home/u")
	for _, c := range []struct{ env, want string }{
		{"/opt/gobin\n/root/go\n", "/opt/gobin"},
		{"\n/root/go\n", "/root/go/bin"}, // GOBIN unset: GOPATH/bin, not GOPATH
		{"\n\n", "/home/u/go/bin"},
		{"", "/home/u/go/bin"},
	} {
		if got := binDirOf(c.env); got != c.want {
			t.Errorf("binDirOf(%q) = %q, want %q", c.env, got, c.want)
		}
	}
}
