package bridge

import "errors"

// Sentinel errors returned (wrapped with %w) by the bridge. The HTTP and
// WebSocket edges translate them, with errors.Is, to statuses.
var (
	// ErrUnauthorized means there was no token or the NATS server rejected it.
	ErrUnauthorized = errors.New("token rejected by the NATS server")
	// ErrForbidden means the NATS server refused the operation for this
	// token's permissions.
	ErrForbidden = errors.New("permission denied by the NATS server")
	// ErrBadSubject means a subject, reply subject or queue group is not
	// valid for the operation.
	ErrBadSubject = errors.New("invalid subject")
	// ErrBadHeader means a NATS header name or value is not acceptable.
	ErrBadHeader = errors.New("invalid header")
	// ErrPayloadTooLarge means the message exceeds the server's max_payload.
	ErrPayloadTooLarge = errors.New("payload exceeds the NATS server's max_payload")
	// ErrUnavailable means NATS cannot be reached right now; retry later.
	ErrUnavailable = errors.New("NATS is unavailable")
	// ErrTooManyTokens means the pool already holds its maximum number of
	// distinct tokens, all in use; retry later.
	ErrTooManyTokens = errors.New("too many distinct tokens in use")
	// ErrNoResponders means a request found no subscriber on its subject.
	ErrNoResponders = errors.New("no responders for the request subject")
	// ErrTimeout means a request got no reply in time.
	ErrTimeout = errors.New("request timed out")
)
