package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

// wrkLoad is a POST load that wrk (a C load generator) runs: conns
// keep-alive connections on 2 threads, each a closed loop. Only a response
// with status want whose body does not contain reject counts; the rest
// are errors. The script (it holds the request's credentials) is written
// to dir, readable by its owner only.
type wrkLoad struct {
	bin     string
	dir     string
	url     string
	headers map[string]string
	body    []byte
	want    int
	reject  string // a body containing this is an error ("" : none)
	conns   int

	script string // path, once written
}

// wrkScript is the Lua script: request, response check, and a summary in
// lines parseWrk reads. Latency is reported as 1,000 quantiles (µs), so
// slices can be merged.
const wrkScript = `wrk.method = "POST"
wrk.body = %s
%s
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0; first = "" end
function response(status, headers, body)
  if status ~= %d or (%s ~= "" and string.find(body, %s, 1, true)) then
    bad = bad + 1
    if first == "" then first = "status " .. status .. ": " .. string.sub(body, 1, 80) end
  end
end
function done(summary, latency, requests)
  local b, f = 0, ""
  for _, t in ipairs(threads) do
    b = b + t:get("bad")
    if f == "" then f = t:get("first") end
  end
  local e = summary.errors
  io.write(string.format("natsgate-bench requests %%d duration_us %%d bad %%d connect %%d read %%d write %%d timeout %%d\n",
    summary.requests, summary.duration, b, e.connect, e.read, e.write, e.timeout))
  io.write("natsgate-bench first " .. string.gsub(f, "\n", " ") .. "\n")
  io.write("natsgate-bench lat")
  for k = 0, 999 do io.write(string.format(" %%d", latency:percentile((k + 0.5) / 10))) end
  io.write("\n")
end
`

// luaQuote quotes s as a Lua string literal: printable ASCII as is, the
// rest as decimal escapes.
func luaQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c >= 0x20 && c < 0x7f:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "\\%03d", c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func (w *wrkLoad) writeScript() error {
	var hdr strings.Builder
	keys := make([]string, 0, len(w.headers))
	for k := range w.headers {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&hdr, "wrk.headers[%s] = %s\n", luaQuote(k), luaQuote(w.headers[k]))
	}
	rej := luaQuote(w.reject)
	src := fmt.Sprintf(wrkScript, luaQuote(string(w.body)), hdr.String(), w.want, rej, rej)
	f, err := os.CreateTemp(w.dir, "wrk-*.lua")
	if err != nil {
		return err
	}
	if _, err := f.WriteString(src); err != nil {
		f.Close()
		return err
	}
	w.script = f.Name()
	return f.Close()
}

// run runs wrk for d (whole seconds, at least 1: wrk's resolution) and
// returns its count; the tally's CPU is wrk's own (loader).
func (w *wrkLoad) run(ctx context.Context, d time.Duration) (*tally, error) {
	if w.script == "" {
		if err := w.writeScript(); err != nil {
			return nil, err
		}
	}
	secs := max(1, int(math.Ceil(d.Seconds())))
	cmd := exec.CommandContext(ctx, w.bin, "-t", "2", "-c", strconv.Itoa(w.conns), "-d", strconv.Itoa(secs)+"s",
		"--timeout", "30s", "-s", w.script, w.url)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("wrk: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	t, err := parseWrk(string(out))
	if err != nil {
		return nil, err
	}
	t.cpu.loader = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	return t, nil
}

// parseWrk reads the summary wrkScript's done prints.
func parseWrk(out string) (*tally, error) {
	t := &tally{}
	var got int
	for _, line := range strings.Split(out, "\n") {
		rest, ok := strings.CutPrefix(line, "natsgate-bench ")
		if !ok {
			continue
		}
		kind, rest, _ := strings.Cut(rest, " ")
		switch kind {
		case "requests":
			f := strings.Fields("requests " + rest)
			if len(f) != 14 {
				return nil, fmt.Errorf("wrk summary: %q", line)
			}
			v := map[string]int64{}
			for i := 0; i < len(f); i += 2 {
				n, err := strconv.ParseInt(f[i+1], 10, 64)
				if err != nil {
					return nil, fmt.Errorf("wrk summary %s: %w", f[i], err)
				}
				v[f[i]] = n
			}
			t.ops = v["requests"] - v["bad"]
			t.msgs = t.ops
			t.errs = v["bad"] + v["connect"] + v["read"] + v["write"] + v["timeout"]
			t.elapsed = time.Duration(v["duration_us"]) * time.Microsecond
			if t.errs > v["bad"] {
				t.firstErr = fmt.Sprintf("socket errors: connect %d, read %d, write %d, timeout %d", v["connect"], v["read"], v["write"], v["timeout"])
			}
			got |= 1
		case "first":
			if t.firstErr == "" {
				t.firstErr = rest
			}
		case "lat":
			for _, f := range strings.Fields(rest) {
				us, err := strconv.ParseInt(f, 10, 64)
				if err != nil {
					return nil, fmt.Errorf("wrk latency: %w", err)
				}
				t.lat = append(t.lat, time.Duration(us)*time.Microsecond)
			}
			got |= 2
		}
	}
	if got != 3 {
		return nil, errors.New("wrk printed no summary (output: " + strings.TrimSpace(out) + ")")
	}
	if t.elapsed <= 0 {
		return nil, errors.New("wrk summary: no duration")
	}
	return t, nil
}
