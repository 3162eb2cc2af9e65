package bridge

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// JetStream errors, beside the core sentinels in errors.go.
var (
	// ErrJetStreamUnavailable means the NATS server (or the token's
	// account) has no JetStream.
	ErrJetStreamUnavailable = errors.New("JetStream is not enabled on the NATS server")
	// ErrNoStream means no stream exists by that name, or none holds the
	// subject.
	ErrNoStream = errors.New("no such stream")
	// ErrConflict means the server refused an operation because of the
	// current state: a failed expectation (last sequence, message id,
	// stream), a name in use with another configuration.
	ErrConflict = errors.New("conflict with the current state")
	// ErrInvalid means the server refused a request as malformed: a
	// stream configuration it does not accept, a bad start position.
	ErrInvalid = errors.New("refused by the NATS server as invalid")
)

// jsAPIPrefix is the subject prefix of the JetStream API.
const jsAPIPrefix = "$JS.API."

// js returns the connection's JetStream handle, made on first use: most
// tokens never touch JetStream and a handle is state kept per token.
func (c *Conn) js() jetstream.JetStream {
	c.jsOnce.Do(func() {
		// New fails only for bad options; it is given none.
		c.jsh, _ = jetstream.New(c.nc)
	})
	return c.jsh
}

// jsCall runs a JetStream API call through the token's own connection,
// so NATS permissions decide, and translates what the server answered
// into the bridge's sentinels. A publish to the JetStream API that the
// server refuses for this token's permissions ends the call at once with
// ErrForbidden instead of the timeout the missing reply would cause.
func (c *Conn) jsCall(ctx context.Context, fn func(ctx context.Context, js jetstream.JetStream) error) error {
	if !c.nc.IsConnected() {
		return fmt.Errorf("%w: not connected to NATS", ErrUnavailable)
	}
	if err := c.perms.inboxError(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := c.perms.watch(jsAPIPrefix+">", cancel)
	defer stop()
	err := fn(ctx, c.js())
	if err == nil {
		return nil
	}
	if cause := context.Cause(ctx); errors.Is(cause, ErrForbidden) {
		return cause
	}
	return mapJSError(err)
}

// mapJSError translates a JetStream API error.
func mapJSError(err error) error {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount),
		errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("%w: %v", ErrJetStreamUnavailable, err)
	// A stored publish no stream answers: no stream holds the subject
	// (without JetStream at all the same happens; callers that must tell
	// the two apart ask the account first).
	case errors.Is(err, jetstream.ErrStreamNotFound), errors.Is(err, jetstream.ErrNoStreamResponse):
		return fmt.Errorf("%w: %v", ErrNoStream, err)
	case errors.Is(err, jetstream.ErrStreamNameAlreadyInUse):
		return fmt.Errorf("%w: %v", ErrConflict, err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return fmt.Errorf("%w: JetStream did not answer in time: %v", ErrUnavailable, err)
	case errors.As(err, &apiErr):
		switch {
		case apiErr.ErrorCode == jetstream.JSErrCodeStreamNotFound:
			return fmt.Errorf("%w: %s", ErrNoStream, apiErr.Description)
		case apiErr.Code == http.StatusConflict || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant:
			return fmt.Errorf("%w: %s", ErrConflict, apiErr.Description)
		case apiErr.Code == http.StatusNotFound:
			return fmt.Errorf("%w: %s", ErrNoStream, apiErr.Description)
		case apiErr.Code == http.StatusServiceUnavailable:
			return fmt.Errorf("%w: %s", ErrUnavailable, apiErr.Description)
		}
		// nats-server answers many invalid requests (stream
		// configurations above all) with its own code 500 and a
		// description of what is wrong: the client's fault, not ours.
		return fmt.Errorf("%w: %s", ErrInvalid, apiErr.Description)
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}
