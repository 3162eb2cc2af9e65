package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// machine describes where the run happened.
func machine(nofile uint64) string {
	cpu := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := "unknown kernel"
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = "Linux " + strings.TrimSpace(string(data))
	}
	return fmt.Sprintf("%s, %d cores (GOMAXPROCS %d), %s, %s/%s, %s, open files %d per process",
		cpu, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), runtime.GOOS, runtime.GOARCH, kernel, nofile)
}

func cell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

func printReport(w io.Writer, b *bench, rows []row, nofile uint64, took time.Duration) {
	o := b.o
	fmt.Fprintf(w, "\nMachine: %s  \n", machine(nofile))
	fmt.Fprintf(w, "Date: %s  \n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(w, "Gateway: %s  \n", b.source)
	if b.centrifugoBin != "" {
		fmt.Fprintf(w, "Centrifugo: %s (%s), memory engine, JSON protocol over WebSocket  \n", b.centrifugoVersion, b.centrifugoBin)
	}
	fmt.Fprintf(w, "HTTP load generator (row 1): %s  \n", b.loadGen())
	fmt.Fprintf(w, "Command: `%s`  \n", strings.TrimSpace("go run ./cmd/gateway-bench "+strings.Join(os.Args[1:], " ")))
	fmt.Fprintf(w, "Run took %s; throughput rows: %s per side in %d alternating slices after %s warm-up; all on loopback, gateway as a subprocess.\n\n",
		took.Round(time.Second), o.duration, o.slices, o.warmup)
	fmt.Fprintln(w, "| # | Measure | natsgate | Baseline (same run) | Result | Goal | Met |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Fprintf(w, "| %d | %s | %s | %s | %s | %s | %s |\n", rowNumber(r.name), cell(r.measure), cell(r.gateway), cell(r.baseline), cell(r.result), cell(r.goal), cell(r.met))
	}
	var bg []string
	noisy := false
	for _, r := range rows {
		bg = append(bg, fmt.Sprintf("row %d %.2f", rowNumber(r.name), r.background))
		noisy = noisy || r.background > 0.25
	}
	fmt.Fprintf(w, "\nCPU used by other processes on the machine meanwhile (cores, average): %s.", strings.Join(bg, ", "))
	if noisy {
		fmt.Fprintf(w, " **Noisy run**: other processes took a share of the %d cores, which hurts CPU-bound sides (the baselines) more than latency-bound ones; compare with a quiet run.", runtime.NumCPU())
	}
	fmt.Fprint(w, "\n\n")
}

func rowNumber(name string) int {
	for i, n := range allRows {
		if n == name {
			return i + 1
		}
	}
	return 0
}

// load is a snapshot of the machine's busy CPU time and of the CPU used
// by this process and its reaped children (the gateways).
type load struct {
	at          time.Time
	machineBusy time.Duration
	ours        time.Duration
}

func loadNow() load {
	l := load{at: time.Now()}
	if data, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(data), "\n")
		f := strings.Fields(line)
		if len(f) > 5 && f[0] == "cpu" {
			var busy int64
			for i, v := range f[1:] {
				n, _ := strconv.ParseInt(v, 10, 64)
				if i != 3 && i != 4 && i < 8 { // idle, iowait; guest time is already in user
					busy += n
				}
			}
			l.machineBusy = time.Duration(busy) * time.Second / clockTicks
		}
	}
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		if syscall.Getrusage(who, &ru) == nil {
			l.ours += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
	return l
}

// others is the CPU, in cores, that other processes used between two
// snapshots (only gateways already stopped count as ours).
func others(a, b load) float64 {
	el := b.at.Sub(a.at).Seconds()
	if el <= 0 {
		return 0
	}
	return max(0, ((b.machineBusy-a.machineBusy)-(b.ours-a.ours)).Seconds()/el)
}
