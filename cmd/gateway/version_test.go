package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"github.com/natsgate/natsgate/internal/gatewayproc"
)

func TestVersionLineNamesModuleVersionAndRevision(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		info *debug.BuildInfo
		want string
		not  string
	}{
		{nil, "natsgate (devel) go", "revision"},
		{&debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"}}, "natsgate (devel) go1.26.0", "revision"},
		{&debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v1.2.0"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "97a094bc"}, {Key: "vcs.time", Value: "2026-12-01T20:51:00Z"}, {Key: "vcs.modified", Value: "true"},
		}}, "natsgate v1.2.0 (revision 97a094bc, 2026-12-01T20:51:00Z, modified) go1.26.0", ""},
	} {
		got := versionFrom(tc.info, tc.info != nil).String()
		if !strings.HasPrefix(got, tc.want) || tc.not != "" && strings.Contains(got, tc.not) {
			t.Errorf("version of %+v: %q, want %q", tc.info, got, tc.want)
		}
	}
}

// TestPlainBuildPrintsDevelVersion builds the binary as a newcomer would
// without VCS stamping and runs --version.
func TestPlainBuildPrintsDevelVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the gateway")
	}
	root, err := gatewayproc.ModuleRoot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "gateway")
	build := exec.Command("go", "build", "-buildvcs=false", "-o", bin, "./cmd/gateway")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("--version: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`^natsgate \(devel\) go1\.\d+`).Match(out) || strings.Contains(string(out), "revision") {
		t.Fatalf("--version of a plain build: %q, want natsgate (devel) and no revision", out)
	}
	// A bad flag: its error once, no usage dump, exit 1.
	out, err = exec.Command(bin, "--no-such-flag").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("bad flag: %v, want exit 1", err)
	}
	if n := strings.Count(string(out), "no-such-flag"); n != 1 || strings.Contains(string(out), "Usage") {
		t.Fatalf("bad flag output %q: want its error once and no usage", out)
	}
}

func TestStartLineCarriesVersionAndPID(t *testing.T) {
	// GATEWAY_VERSION, set by a deployment for its own purposes, is not
	// --version's twin: the gateway starts.
	s := start(t, map[string]string{"GATEWAY_VERSION": "1.2.3"}, "--token", "t")
	pid := strconv.Itoa(os.Getpid())
	line := firstLine(s.stderr.String(), "natsgate listening")
	if !strings.Contains(line, " version=") || !strings.Contains(line, " pid="+pid+" ") {
		t.Fatalf("start-up line %q: want version= and pid=%s", line, pid)
	}
	j := start(t, map[string]string{"GATEWAY_LOG_FORMAT": "json"}, "--token", "t")
	line = firstLine(j.stderr.String(), "natsgate listening")
	if !strings.Contains(line, `"version":"`) || !strings.Contains(line, `"pid":`+pid+`,`) {
		t.Fatalf("JSON start-up line %q: want \"version\" and \"pid\":%s", line, pid)
	}
	if _, ok := gatewayproc.ListenAddr(line); !ok {
		t.Fatalf("start-up line %q no longer gives the address to gatewayproc", line)
	}
}

func TestHelpListsDefaultsAsTyped(t *testing.T) {
	var out gatewayproc.LogBuffer
	if err := run(context.Background(), []string{"--help"}, func(string) string { return "" }, &out, &out); err != nil {
		t.Fatal(err)
	}
	help := out.String()
	for _, want := range []string{"Usage: natsgate", `(default "127.0.0.1:8080")`, "(default 20000)", "(default 5s)", "--version",
		"--tls-cert", "GATEWAY_TLS_CERT", "--tls-key", "GATEWAY_TLS_KEY", "--trusted-proxies", "GATEWAY_TRUSTED_PROXIES"} {
		if !strings.Contains(help, want) {
			t.Errorf("--help lacks %s", want)
		}
	}
	if strings.Contains(help, `"1024"`) || strings.Contains(help, "Usage of") {
		t.Errorf("--help quotes integers or uses the flag package's header:\n%s", help)
	}
	var o2 gatewayproc.LogBuffer
	err := run(context.Background(), []string{"--version"}, func(string) string { return "" }, &o2, &o2)
	if err != nil || !strings.HasPrefix(o2.String(), "natsgate ") {
		t.Fatalf("--version: %v %q", err, o2.String())
	}
}

func firstLine(log, with string) string {
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, with) {
			return l
		}
	}
	return ""
}
