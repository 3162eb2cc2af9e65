package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
)

// maxStreamName is nats-server's limit on stream names (JSMaxNameLen).
const maxStreamName = server.JSMaxNameLen

// ValidateStreamName checks a stream name as nats-server does: non-empty,
// at most 255 bytes, valid UTF-8, and none of whitespace, control
// characters, '.', '*', '>' or a path separator ('/', '\').
func ValidateStreamName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty stream name", ErrInvalid)
	case len(name) > maxStreamName:
		return fmt.Errorf("%w: stream name longer than %d bytes", ErrInvalid, maxStreamName)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: stream name is not valid UTF-8", ErrInvalid)
	case strings.ContainsAny(name, `.*>/\`):
		return fmt.Errorf("%w: stream name %q has one of . * > / \\ (a stream name is one subject token and a directory name)", ErrInvalid, name)
	}
	if err := checkChars(name); err != nil {
		return fmt.Errorf("%w: stream name %s", ErrInvalid, err)
	}
	return nil
}

// jsAPI sends a JetStream API request (subject after "$JS.API.") through
// the token's connection, as jsRaw does, and returns the server's answer
// as its top-level JSON fields, or the error it answered, mapped.
func (c *Conn) jsAPI(ctx context.Context, subject string, req []byte) (map[string]json.RawMessage, error) {
	var data []byte
	err := c.jsRaw(ctx, func(ctx context.Context) error {
		m, err := c.nc.RequestWithContext(ctx, jsAPIPrefix+subject, req)
		if err != nil {
			return err
		}
		data = m.Data
		var e struct {
			Error *jetstream.APIError `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error != nil {
			return e.Error
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil {
		return nil, fmt.Errorf("%w: the JetStream API answered %s with invalid JSON: %v", ErrUnavailable, subject, err)
	}
	return fields, nil
}

// envelope are the JetStream API answer's own fields, beside the stream
// info: its type, did_create, and the paging of a subjects listing.
var envelope = map[string]bool{"type": true, "did_create": true, "total": true, "offset": true, "limit": true}

// streamInfoJSON is a stream info answer as nats-server sent it (config,
// created, state, cluster, ts, …), each field's value byte for byte,
// without the envelope's fields.
func streamInfoJSON(fields map[string]json.RawMessage) []byte {
	keys := make([]string, 0, len(fields))
	for k := range fields {
		if !envelope[k] {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	b := []byte{'{'}
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		b = append(b, fields[k]...)
	}
	return append(b, '}')
}

// StreamInfo returns a stream's info (its configuration and state) in
// nats-server's own JSON. An unknown stream is ErrNoStream.
func (c *Conn) StreamInfo(ctx context.Context, name string) ([]byte, error) {
	if err := ValidateStreamName(name); err != nil {
		return nil, err
	}
	fields, err := c.jsAPI(ctx, "STREAM.INFO."+name, nil)
	if err != nil {
		return nil, err
	}
	return streamInfoJSON(fields), nil
}

// PutStream creates the stream name with config, or updates it when it
// exists, and returns its info in nats-server's JSON and whether it was
// created. config is a stream configuration in nats-server's JSON (what
// `nats stream add --config` reads); its "name", when present, must be
// name. Fields nats-server (v2.15) does not know are ErrInvalid, as is a
// configuration the server refuses, with the server's description.
func (c *Conn) PutStream(ctx context.Context, name string, config []byte) (info []byte, created bool, err error) {
	if err := ValidateStreamName(name); err != nil {
		return nil, false, err
	}
	req, err := streamRequest(name, config)
	if err != nil {
		return nil, false, err
	}
	// Ask first: creating a stream that exists with the same
	// configuration succeeds too, and would read as created.
	_, err = c.jsAPI(ctx, "STREAM.INFO."+name, nil)
	exists := err == nil
	if err != nil && !errors.Is(err, ErrNoStream) {
		return nil, false, err
	}
	for range 2 { // a stream deleted or created meanwhile takes the other way, once
		op := "STREAM.CREATE."
		if exists {
			op = "STREAM.UPDATE."
		}
		fields, err := c.jsAPI(ctx, op+name, req)
		switch {
		case err == nil:
			return streamInfoJSON(fields), !exists, nil
		case !exists && isAPIError(err, jetstream.JSErrCodeStreamNameInUse):
			exists = true
		case exists && errors.Is(err, ErrNoStream):
			exists = false
		default:
			return nil, false, err
		}
	}
	return nil, false, fmt.Errorf("%w: stream %q was created and deleted while being configured; try again", ErrConflict, name)
}

// isAPIError reports whether err (unmapped or mapped) carries nats-server's
// error code code.
func isAPIError(err error, code jetstream.ErrorCode) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == code
}

// streamRequest checks a client's stream configuration and returns it
// with the name set: a JSON object, with nats-server's field names only.
func streamRequest(name string, config []byte) ([]byte, error) {
	if len(bytes.TrimSpace(config)) == 0 {
		config = []byte("{}")
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(config, &fields); err != nil || fields == nil {
		return nil, fmt.Errorf("%w: the stream configuration must be a JSON object (nats-server's stream configuration, as `nats stream add --config` reads)", ErrInvalid)
	}
	if raw, ok := fields["name"]; ok {
		var n string
		if err := json.Unmarshal(raw, &n); err != nil {
			return nil, fmt.Errorf("%w: the configuration's \"name\" must be a string", ErrInvalid)
		}
		if n != "" && n != name {
			return nil, fmt.Errorf("%w: the configuration names stream %q but the path names %q", ErrInvalid, n, name)
		}
	}
	nameJSON, _ := json.Marshal(name)
	fields["name"] = nameJSON
	req, err := json.Marshal(fields)
	if err != nil {
		return nil, fmt.Errorf("%w: stream configuration: %v", ErrInvalid, err)
	}
	// nats-server itself refuses unknown fields only in its (default)
	// strict mode; the gateway refuses them whatever the server's mode,
	// so a typo never passes silently.
	dec := json.NewDecoder(bytes.NewReader(req))
	dec.DisallowUnknownFields()
	var check server.StreamConfigRequest
	if err := dec.Decode(&check); err != nil {
		return nil, fmt.Errorf("%w: stream configuration: %v", ErrInvalid, err)
	}
	return req, nil
}

// StreamNames lists the names of the account's streams.
func (c *Conn) StreamNames(ctx context.Context) ([]string, error) {
	names := []string{}
	for {
		req, _ := json.Marshal(map[string]int{"offset": len(names)})
		fields, err := c.jsAPI(ctx, "STREAM.NAMES", req)
		if err != nil {
			return nil, err
		}
		var (
			total int
			page  []string
		)
		if err := json.Unmarshal(fields["total"], &total); err != nil {
			return nil, fmt.Errorf("%w: stream names: %v", ErrUnavailable, err)
		}
		if s := fields["streams"]; s != nil { // null when there are none
			if err := json.Unmarshal(s, &page); err != nil {
				return nil, fmt.Errorf("%w: stream names: %v", ErrUnavailable, err)
			}
		}
		names = append(names, page...)
		if len(page) == 0 || len(names) >= total {
			return names, nil
		}
	}
}

// DeleteStream deletes a stream and its messages. An unknown stream is
// ErrNoStream.
func (c *Conn) DeleteStream(ctx context.Context, name string) error {
	if err := ValidateStreamName(name); err != nil {
		return err
	}
	fields, err := c.jsAPI(ctx, "STREAM.DELETE."+name, nil)
	if err != nil {
		return err
	}
	var ok bool
	if json.Unmarshal(fields["success"], &ok) != nil || !ok {
		return fmt.Errorf("%w: the server did not confirm deleting stream %q", ErrUnavailable, name)
	}
	return nil
}
