package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/natsgate/natsgate/internal/gatewayproc"
)

// centrifugoModule is the Centrifugo the bench compares with, installed
// with go install when no binary is found.
const centrifugoModule = "github.com/centrifugal/centrifugo/v6@v6.9.1"

// findCentrifugo returns the Centrifugo binary: -centrifugo, else
// centrifugo in PATH or in go env GOBIN / GOPATH/bin, else it runs go
// install (a few minutes the first time). It also says which version the
// binary was built from (go version -m), since go install builds report
// v0.0.0 themselves.
func findCentrifugo(ctx context.Context, flagPath string) (bin, version string, err error) {
	bin = flagPath
	if bin == "" {
		bin, _ = exec.LookPath("centrifugo") // "" when not in PATH
	}
	if bin == "" {
		dir := goBinDir(ctx)
		bin = filepath.Join(dir, "centrifugo")
		if _, err := os.Stat(bin); err != nil {
			logf("centrifugo not found; go install %s (a few minutes)", centrifugoModule)
			cmd := exec.CommandContext(ctx, "go", "install", centrifugoModule)
			if out, err := cmd.CombinedOutput(); err != nil {
				return "", "", fmt.Errorf("go install %s: %v\n%s", centrifugoModule, err, out)
			}
		}
	}
	out, err := exec.CommandContext(ctx, "go", "version", "-m", bin).Output()
	if err != nil {
		return "", "", fmt.Errorf("go version -m %s: %w", bin, err)
	}
	version = "unknown version"
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "mod" {
			version = f[1] + " " + f[2]
		}
	}
	return bin, version, nil
}

// goBinDir is where go install puts binaries.
func goBinDir(ctx context.Context) string {
	out, _ := exec.CommandContext(ctx, "go", "env", "GOBIN", "GOPATH").Output()
	return binDirOf(string(out))
}

// binDirOf reads go env GOBIN GOPATH's output: a line each, GOBIN first.
// An unset GOBIN is an empty first line, so the output must not be
// trimmed before it is split.
func binDirOf(goEnv string) string {
	f := strings.Split(goEnv, "\n")
	if len(f) > 0 && strings.TrimSpace(f[0]) != "" {
		return strings.TrimSpace(f[0])
	}
	if len(f) > 1 && strings.TrimSpace(f[1]) != "" {
		return filepath.Join(strings.TrimSpace(f[1]), "bin")
	}
	return filepath.Join(os.Getenv("HOME"), "go", "bin")
}

// centrifugo is a Centrifugo subprocess: memory engine, an HTTP API key,
// HMAC connection JWTs, and subscription allowed on channels without a
// namespace to any connected client.
type centrifugo struct {
	proc
	addr   string
	apiKey string
	secret []byte
}

// centrifugoChannel is the channel the rows use.
const centrifugoChannel = "bench"

// startCentrifugo writes a config into a new directory under dir and runs
// Centrifugo on a free loopback port, waiting for /health.
func (b *bench) startCentrifugo(ctx context.Context, dir, name string) (*centrifugo, error) {
	if b.centrifugoBin == "" {
		return nil, errors.New("no Centrifugo binary: " + b.centrifugoErr)
	}
	port, err := gatewayproc.FreePort()
	if err != nil {
		return nil, err
	}
	c := &centrifugo{
		proc:   proc{kind: "Centrifugo", name: name},
		addr:   "127.0.0.1:" + strconv.Itoa(port),
		apiKey: gatewayproc.Token(),
		secret: []byte(gatewayproc.Token()),
	}
	cfg := map[string]any{
		"http_server": map[string]any{"address": "127.0.0.1", "port": port},
		"log":         map[string]any{"level": "warn"},
		"client": map[string]any{
			"token":           map[string]any{"hmac_secret_key": string(c.secret)},
			"allowed_origins": []string{"*"},
		},
		"http_api":    map[string]any{"key": c.apiKey},
		"channel":     map[string]any{"without_namespace": map[string]any{"allow_subscribe_for_client": true}},
		"health":      map[string]any{"enabled": true},
		"usage_stats": map[string]any{"disabled": true},
	}
	data, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	cdir, err := os.MkdirTemp(dir, "centrifugo-")
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(cdir, "config.json")
	if err := os.WriteFile(conf, data, 0o600); err != nil {
		return nil, err
	}
	if err := b.startProc(&c.proc, b.centrifugoBin, "--config", conf); err != nil {
		return nil, err
	}
	if err := c.waitReady(ctx, "http://"+c.addr+"/health"); err != nil {
		return nil, err
	}
	logf("Centrifugo %q pid %d on http://%s", name, c.cmd.Process.Pid, c.addr)
	return c, nil
}

// jwt mints an HS256 connection token for user, valid for an hour.
func (c *centrifugo) jwt(user string) string {
	enc := base64.RawURLEncoding
	claims, _ := json.Marshal(map[string]any{"sub": user, "exp": time.Now().Add(time.Hour).Unix()})
	s := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString(claims)
	m := hmac.New(sha256.New, c.secret)
	m.Write([]byte(s))
	return s + "." + enc.EncodeToString(m.Sum(nil))
}

// publishURL is the HTTP API's publish method.
func (c *centrifugo) publishURL() string { return "http://" + c.addr + "/api/publish" }

// apiHeaders are the HTTP API's request headers.
func (c *centrifugo) apiHeaders() map[string]string {
	return map[string]string{"X-API-Key": c.apiKey, "Content-Type": "application/json"}
}

// apiOp posts body to an HTTP API method and wants a 200 whose body is a
// result, not an error (Centrifugo answers API errors with 200).
func (c *centrifugo) apiOp(client *http.Client, method string, body []byte, msgs int) op {
	url := "http://" + c.addr + "/api/" + method
	return func(ctx context.Context) (int, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return 0, err
		}
		for k, v := range c.apiHeaders() {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		out, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if err != nil {
			return 0, err
		}
		if resp.StatusCode != http.StatusOK || bytes.Contains(out, []byte(`"error"`)) {
			return 0, fmt.Errorf("%s: status %d: %.100s", method, resp.StatusCode, out)
		}
		return msgs, nil
	}
}

// cfClient is a Centrifugo client on the JSON protocol over WebSocket:
// connected with a JWT, subscribed to one channel, with a reader that
// counts publications (one frame may carry several, a line each) and
// answers the server's pings.
type cfClient struct {
	c       *websocket.Conn
	pubs    *atomic.Int64
	onPub   func(data json.RawMessage) // the publication's data, when set
	other   *atomic.Int64              // lines that are neither pings nor publications
	writeMu sync.Mutex
}

// dialCentrifugo connects with token and subscribes to channel, reading
// the replies; then a reader runs until the connection ends.
func dialCentrifugo(ctx context.Context, addr, token, channel string, pubs, other *atomic.Int64, onPub func(json.RawMessage)) (*cfClient, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws://"+addr+"/connection/websocket", &websocket.DialOptions{
		HTTPClient:      wsHTTP,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		if resp != nil {
			err = fmt.Errorf("%w (HTTP %d)", err, resp.StatusCode)
		}
		return nil, err
	}
	c.SetReadLimit(1 << 20)
	cl := &cfClient{c: c, pubs: pubs, other: other, onPub: onPub}
	for id, cmd := range []string{
		fmt.Sprintf(`{"id":1,"connect":{"token":%q,"name":"gateway-bench"}}`, token),
		fmt.Sprintf(`{"id":2,"subscribe":{"channel":%q}}`, channel),
	} {
		if err := c.Write(ctx, websocket.MessageText, []byte(cmd)); err != nil {
			c.CloseNow()
			return nil, err
		}
		if err := cl.awaitReply(ctx, id+1); err != nil {
			c.CloseNow()
			return nil, err
		}
	}
	go cl.read()
	return cl, nil
}

// awaitReply reads frames until the reply to command id, answering pings.
func (cl *cfClient) awaitReply(ctx context.Context, id int) error {
	want := fmt.Appendf(nil, `{"id":%d,`, id)
	for {
		_, data, err := cl.c.Read(ctx)
		if err != nil {
			return fmt.Errorf("waiting for reply %d: %w", id, err)
		}
		for _, line := range bytes.Split(data, []byte("\n")) {
			switch {
			case isCentrifugoPing(line):
				if err := cl.pong(ctx); err != nil {
					return err
				}
			case bytes.HasPrefix(line, want):
				if bytes.Contains(line, []byte(`"error":`)) {
					return fmt.Errorf("centrifugo refused command %d: %s", id, line)
				}
				return nil
			}
		}
	}
}

func (cl *cfClient) pong(ctx context.Context) error {
	cl.writeMu.Lock()
	defer cl.writeMu.Unlock()
	return cl.c.Write(ctx, websocket.MessageText, []byte("{}"))
}

func (cl *cfClient) read() {
	for {
		_, data, err := cl.c.Read(context.Background())
		if err != nil {
			return
		}
		pubs, pings := scanCentrifugoFrame(data, cl.onPub, cl.other)
		cl.pubs.Add(int64(pubs))
		for range pings {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := cl.pong(ctx)
			cancel()
			if err != nil {
				return
			}
		}
	}
}

// isCentrifugoPing tells whether a line of a frame is the server's ping,
// an empty object.
func isCentrifugoPing(line []byte) bool { return bytes.Equal(bytes.TrimSpace(line), []byte("{}")) }

// pubPrefix starts a publication push; the channel's name follows.
var pubPrefix = []byte(`{"push":{"channel":`)

// scanCentrifugoFrame counts a frame's publications and pings (it may
// carry several replies and pushes, a line each). onPub, when set, gets
// each publication's data; lines that are neither count in other.
func scanCentrifugoFrame(frame []byte, onPub func(json.RawMessage), other *atomic.Int64) (pubs, pings int) {
	for len(frame) > 0 {
		line := frame
		if i := bytes.IndexByte(frame, '\n'); i >= 0 {
			line, frame = frame[:i], frame[i+1:]
		} else {
			frame = nil
		}
		switch {
		case len(bytes.TrimSpace(line)) == 0:
		case isCentrifugoPing(line):
			pings++
		case isPublication(line):
			pubs++
			if onPub != nil {
				var m struct {
					Push struct {
						Pub struct {
							Data json.RawMessage `json:"data"`
						} `json:"pub"`
					} `json:"push"`
				}
				if json.Unmarshal(line, &m) == nil {
					onPub(m.Push.Pub.Data)
				}
			}
		default:
			other.Add(1)
		}
	}
	return pubs, pings
}

// isPublication tells whether a line is a publication push:
// {"push":{"channel":"…","pub":{…}}}, checked without decoding it.
func isPublication(line []byte) bool {
	rest, ok := bytes.CutPrefix(line, pubPrefix)
	if !ok || len(rest) == 0 || rest[0] != '"' {
		return false
	}
	for i := 1; i < len(rest); i++ {
		switch rest[i] {
		case '\\':
			i++
		case '"':
			return bytes.HasPrefix(rest[i+1:], []byte(`,"pub":{`))
		}
	}
	return false
}
