package httpapi

import (
	"net/http"
	"strconv"

	"github.com/natsgate/natsgate/bridge"
)

// streamOp adapts a stream management handler: token, the {stream} name
// checked before anything reaches NATS (when the route has one), the
// token's connection, and the operation counted by op and status.
func (s *Server) streamOp(op string, named bool, h func(w http.ResponseWriter, r *http.Request, c *bridge.Conn, name string) (int, error)) http.HandlerFunc {
	return apiHandler(func(w http.ResponseWriter, r *http.Request) (err error) {
		status := 0
		defer func() {
			if err != nil {
				status, _ = classify(err)
			}
			s.metrics.streamOps.WithLabelValues(op, strconv.Itoa(status)).Inc()
		}()
		tok, err := s.bearer(r)
		if err != nil {
			return err
		}
		var name string
		if named {
			var ok bool
			if name, ok = pathParam(r, "stream"); !ok {
				return badRequest("bad escape in the stream name")
			}
			if err := bridge.ValidateStreamName(name); err != nil {
				return err
			}
		}
		c, err := s.connect(r.Context(), r.RemoteAddr, tok)
		if err != nil {
			return err
		}
		defer c.Release()
		status, err = h(w, r, c, name)
		return err
	})
}

// handlePutStream handles "PUT /v1/streams/{stream}": the body is a
// stream configuration in nats-server's JSON; 201 with the stream info
// when the stream was created, 200 when an existing one was updated.
func (s *Server) handlePutStream() http.HandlerFunc {
	return s.streamOp("put", true, func(w http.ResponseWriter, r *http.Request, c *bridge.Conn, name string) (int, error) {
		body, err := s.readBody(w, r, c.MaxPayload())
		if err != nil {
			return 0, err
		}
		info, created, err := c.PutStream(r.Context(), name, body)
		if err != nil {
			return 0, err
		}
		status := http.StatusOK
		if created {
			status = http.StatusCreated
		}
		writeRawJSON(w, status, info)
		return status, nil
	})
}

// handleListStreams handles "GET /v1/streams": a JSON array of the
// account's stream names.
func (s *Server) handleListStreams() http.HandlerFunc {
	return s.streamOp("list", false, func(w http.ResponseWriter, r *http.Request, c *bridge.Conn, _ string) (int, error) {
		names, err := c.StreamNames(r.Context())
		if err != nil {
			return 0, err
		}
		writeJSON(w, http.StatusOK, names)
		return http.StatusOK, nil
	})
}

// handleGetStream handles "GET /v1/streams/{stream}": the stream info,
// configuration and state, in nats-server's JSON.
func (s *Server) handleGetStream() http.HandlerFunc {
	return s.streamOp("get", true, func(w http.ResponseWriter, r *http.Request, c *bridge.Conn, name string) (int, error) {
		info, err := c.StreamInfo(r.Context(), name)
		if err != nil {
			return 0, err
		}
		writeRawJSON(w, http.StatusOK, info)
		return http.StatusOK, nil
	})
}

// handleDeleteStream handles "DELETE /v1/streams/{stream}": 204 once the
// stream and its messages are gone.
func (s *Server) handleDeleteStream() http.HandlerFunc {
	return s.streamOp("delete", true, func(w http.ResponseWriter, r *http.Request, c *bridge.Conn, name string) (int, error) {
		if err := c.DeleteStream(r.Context(), name); err != nil {
			return 0, err
		}
		w.WriteHeader(http.StatusNoContent)
		return http.StatusNoContent, nil
	})
}
