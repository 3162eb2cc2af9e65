package httpapi

import (
	"io/fs"
	"net/http"
)

// handleHealthz handles "GET /healthz": the process is up.
func handleHealthz() http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}
}

// handleReadyz handles "GET /readyz": NATS is usable and the gateway is
// not shutting down.
func (s *Server) handleReadyz() http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.draining() {
			writeError(w, r, errShuttingDown)
			return
		}
		if err := s.broker.Ready(r.Context()); err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	}
}

// handleOpenAPI handles "GET /openapi.yaml".
func handleOpenAPI(doc []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(doc)
	}
}

// consoleCSP is the console page's Content-Security-Policy: its own
// scripts and styles only, connections to its own origin only.
const consoleCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// handleAsset handles "GET /" and "GET /client.js" from the embedded web
// assets, with security headers.
func handleAsset(assets fs.FS, name, contentType string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		b, err := fs.ReadFile(assets, name)
		if err != nil {
			writeError(w, r, errNotFound)
			return
		}
		h := w.Header()
		h.Set("Content-Type", contentType)
		h.Set("Content-Security-Policy", consoleCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		_, _ = w.Write(b)
	}
}
