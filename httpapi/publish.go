package httpapi

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/natsgate/natsgate/bridge"
)

// headerPrefix marks request headers that become NATS headers, and NATS
// headers of a reply returned as HTTP headers (as Synadia's gateway does).
const headerPrefix = "NatsH-"

// subjectParam returns the {subject} path segment, unescaped.
func subjectParam(r *http.Request) (string, error) {
	s, ok := pathParam(r, "subject")
	if !ok {
		return "", fmt.Errorf("%w: bad escape in subject", bridge.ErrBadSubject)
	}
	return s, nil
}

// pathParam returns a path segment, unescaped; false for a bad escape.
func pathParam(r *http.Request, name string) (string, bool) {
	s := chi.URLParam(r, name)
	if r.URL.RawPath != "" {
		u, err := url.PathUnescape(s)
		if err != nil {
			return "", false
		}
		s = u
	}
	return s, true
}

// queryValue is r.URL.Query().Get(name) without parsing an empty query.
func queryValue(r *http.Request, name string) string {
	if r.URL.RawQuery == "" {
		return ""
	}
	return r.URL.Query().Get(name)
}

// natsHeaders maps "NatsH-<Name>: v" request headers to NATS headers
// "<Name>: v". Go canonicalises HTTP header names, so <Name> arrives as
// Canonical-Form.
func natsHeaders(h http.Header) (map[string][]string, error) {
	var out map[string][]string
	for k, vs := range h {
		if len(k) < len(headerPrefix) || !strings.EqualFold(k[:len(headerPrefix)], headerPrefix) {
			continue
		}
		name := k[len(headerPrefix):]
		if name == "" {
			return nil, fmt.Errorf("%w: %q has no header name after the prefix", bridge.ErrBadHeader, k)
		}
		if out == nil {
			out = make(map[string][]string)
		}
		out[name] = append(out[name], vs...)
	}
	if err := bridge.ValidateHeaders(out); err != nil {
		return nil, err
	}
	return out, nil
}

// readBody reads a request body of at most limit bytes. (A slow body is
// the http.Server's ReadTimeout's to cut off.)
func (s *Server) readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	return s.readBodyInto(w, r, limit, []byte{})
}

// readBodyInto is readBody appending to buf, whose memory it reuses when
// the body fits.
func (s *Server) readBodyInto(w http.ResponseWriter, r *http.Request, limit int64, buf []byte) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, fmt.Errorf("%w: body of %d bytes, limit %d", bridge.ErrPayloadTooLarge, r.ContentLength, limit)
	}
	var err error
	if n := int(r.ContentLength); n >= 0 { // the usual case: read exactly that much (net/http stops the body there)
		buf = slices.Grow(buf, n)[:len(buf)+n]
		_, err = io.ReadFull(r.Body, buf[len(buf)-n:])
	} else {
		b := bytes.NewBuffer(buf)
		_, err = b.ReadFrom(http.MaxBytesReader(w, r.Body, limit))
		buf = b.Bytes()
	}
	if err != nil {
		return nil, bodyError(err, limit)
	}
	return buf, nil
}

// bodyError is what a failed body read means for the client.
func bodyError(err error, limit int64) error {
	var (
		mbe *http.MaxBytesError
		ne  net.Error
	)
	switch {
	case errors.As(err, &mbe):
		return fmt.Errorf("%w: body over %d bytes", bridge.ErrPayloadTooLarge, limit)
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("%w: the body did not arrive in time", errBodyTimeout)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("the body ended before its Content-Length")
	}
	return err
}

// handlePublish handles "POST /v1/publish/{subject}": the body is the
// payload; 204 once the NATS server has the message.
func (s *Server) handlePublish() http.HandlerFunc {
	return apiHandler(func(w http.ResponseWriter, r *http.Request) error {
		tok, m, err := s.messageFromRequest(r)
		if err != nil {
			return err
		}
		if reply := queryValue(r, "reply"); reply != "" {
			if err := bridge.ValidatePublishSubject(reply, s.cfg.MaxSubjectLen); err != nil {
				return fmt.Errorf("reply: %w", err)
			}
			m.Reply = reply
		}
		c, err := s.connectWithBody(w, r, tok, m)
		if err != nil {
			return err
		}
		defer c.Release()
		if err := c.Publish(r.Context(), m, s.cfg.MaxSubjectLen); err != nil {
			return err
		}
		s.metrics.msgsIn.WithLabelValues("http").Inc()
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

// apiHandler adapts a handler that returns its error: the one place an
// HTTP handler's error becomes problem+json (a streaming handler returns
// nil once its stream has begun).
func apiHandler(h func(http.ResponseWriter, *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			writeError(w, r, err)
		}
	}
}

// connectWithBody gets the token's connection and reads the request body,
// bounded by the server's max_payload, into m. The caller releases the
// connection.
func (s *Server) connectWithBody(w http.ResponseWriter, r *http.Request, tok string, m *bridge.Msg) (*bridge.Conn, error) {
	c, err := s.connect(r.Context(), r.RemoteAddr, tok)
	if err != nil {
		return nil, err
	}
	if m.Data, err = s.readBody(w, r, c.MaxPayload()); err != nil {
		c.Release()
		return nil, err
	}
	return c, nil
}

// messageFromRequest reads and checks the token, subject and NATS headers
// of a publish or request, before anything reaches NATS.
func (s *Server) messageFromRequest(r *http.Request) (string, *bridge.Msg, error) {
	tok, err := s.bearer(r)
	if err != nil {
		return "", nil, err
	}
	subject, err := subjectParam(r)
	if err == nil {
		err = bridge.ValidatePublishSubject(subject, s.cfg.MaxSubjectLen)
	}
	if err != nil {
		return "", nil, err
	}
	h, err := natsHeaders(r.Header)
	if err != nil {
		return "", nil, err
	}
	return tok, &bridge.Msg{Subject: subject, Header: h}, nil
}

// parseTimeout reads a timeout given as a Go duration ("500ms", "2s") or a
// bare number of milliseconds.
func parseTimeout(v string, def, max time.Duration) (time.Duration, error) {
	if v == "" {
		return def, nil
	}
	var d time.Duration
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n > int64(max/time.Millisecond) {
			return 0, badRequest("timeout %s ms is above the maximum of %s", v, max)
		}
		d = time.Duration(n) * time.Millisecond
	} else if d, err = time.ParseDuration(v); err != nil {
		return 0, badRequest("timeout %q is not a duration (like 500ms or 2s) or a number of milliseconds", v)
	}
	switch {
	case d <= 0:
		return 0, badRequest("timeout must be positive")
	case d > max:
		return 0, badRequest("timeout %s is above the maximum of %s", d, max)
	}
	return d, nil
}

// handleRequest handles "POST /v1/request/{subject}": request/reply; the
// reply's payload is the body and its NATS headers come back as NatsH-*.
func (s *Server) handleRequest() http.HandlerFunc {
	return apiHandler(func(w http.ResponseWriter, r *http.Request) error {
		reply, err := s.request(w, r)
		if err != nil {
			return err
		}
		writeReply(w, reply)
		return nil
	})
}

// request sends the request a POST describes (subject, NatsH-* headers,
// timeout, body) and returns the reply.
func (s *Server) request(w http.ResponseWriter, r *http.Request) (*bridge.Msg, error) {
	tok, m, err := s.messageFromRequest(r)
	if err != nil {
		return nil, err
	}
	timeout, err := parseTimeout(queryValue(r, "timeout"), s.cfg.RequestTimeout, s.cfg.MaxRequestTimeout)
	if err != nil {
		return nil, err
	}
	c, err := s.connectWithBody(w, r, tok, m)
	if err != nil {
		return nil, err
	}
	defer c.Release()
	reply, err := c.Request(r.Context(), m, timeout, s.cfg.MaxSubjectLen)
	if err != nil {
		return nil, err
	}
	s.metrics.msgsIn.WithLabelValues("http").Inc()
	return reply, nil
}

// writeReply answers a reply as it came: its payload as the body, its
// NATS headers as NatsH-* headers.
func writeReply(w http.ResponseWriter, reply *bridge.Msg) {
	h := w.Header()
	for k, vs := range reply.Header {
		h[headerPrefix+k] = vs
	}
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.Itoa(len(reply.Data)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(reply.Data)
}
