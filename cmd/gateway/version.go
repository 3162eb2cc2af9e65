package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// buildVersion is what the binary knows of its own origin, from the build
// information Go records: the module version ("(devel)" for a build from
// a source tree the go command could not version) and, when the build was
// VCS-stamped, the commit.
type buildVersion struct {
	version  string
	revision string
	time     string
	modified bool
	goVer    string
}

func readVersion() buildVersion {
	info, ok := debug.ReadBuildInfo()
	return versionFrom(info, ok)
}

func versionFrom(info *debug.BuildInfo, ok bool) buildVersion {
	v := buildVersion{version: "(devel)", goVer: runtime.Version()}
	if !ok || info == nil {
		return v
	}
	if info.Main.Version != "" {
		v.version = info.Main.Version
	}
	if info.GoVersion != "" {
		v.goVer = info.GoVersion
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			v.revision = s.Value
		case "vcs.time":
			v.time = s.Value
		case "vcs.modified":
			v.modified = s.Value == "true"
		}
	}
	return v
}

// String is the --version line: "natsgate (devel) go1.26.0" for a plain
// build, "natsgate v1.2.0 (revision 97a094b…, 2026-12-01T20:51:00Z,
// modified) go1.26.0" for a VCS-stamped one.
func (v buildVersion) String() string {
	var b strings.Builder
	b.WriteString("natsgate " + v.version)
	if v.revision != "" {
		parts := []string{"revision " + v.revision}
		if v.time != "" {
			parts = append(parts, v.time)
		}
		if v.modified {
			parts = append(parts, "modified")
		}
		fmt.Fprintf(&b, " (%s)", strings.Join(parts, ", "))
	}
	b.WriteString(" " + v.goVer)
	return b.String()
}

// logAttrs are the start-up line's version attributes; revision only when
// the build carries one.
func (v buildVersion) logAttrs() []any {
	attrs := []any{"version", v.version}
	if v.revision != "" {
		rev := v.revision
		if v.modified {
			rev += "+modified"
		}
		attrs = append(attrs, "revision", rev)
	}
	return attrs
}
