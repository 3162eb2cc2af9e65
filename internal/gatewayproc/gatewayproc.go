// Package gatewayproc holds what the project's tools and tests need to run
// the gateway as a process of its own (the benchmark, the soak, the
// cluster and end-to-end tests): building the binary, free ports, tokens,
// collecting and reading its log.
package gatewayproc

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
)

// ModuleRoot returns the directory of the Go module holding the working
// directory: the natsgate repository when run from inside it.
func ModuleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("run inside the natsgate module (go env GOMOD: %q, %v)", gomod, err)
	}
	return filepath.Dir(gomod), nil
}

// Build builds ./cmd/gateway of the source tree at root into dir and
// returns the binary's path; a failed build's output is in the error.
func Build(ctx context.Context, root, dir string) (string, error) {
	if _, err := exec.LookPath("go"); err != nil {
		return "", errors.New("no go command in PATH")
	}
	bin := filepath.Join(dir, "gateway")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/gateway")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/gateway: %v\n%s", err, out)
	}
	return bin, nil
}

// FreePort returns a loopback port nobody listened on a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Token returns a random token.
func Token() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// listening matches the gateway's start-up line in either log format:
// addr=127.0.0.1:1 or "addr":"127.0.0.1:1".
var listening = regexp.MustCompile(`natsgate listening"?,?\s?"?addr"?[=:]"?([0-9.]+:[0-9]+)`)

// ListenAddr finds the HTTP address the gateway logged it listens on.
func ListenAddr(log string) (string, bool) {
	m := listening.FindStringSubmatch(log)
	if m == nil {
		return "", false
	}
	return m[1], true
}

// LogBuffer collects a gateway's log (a process's stderr, or an in-process
// gateway's slog output) from many goroutines.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
