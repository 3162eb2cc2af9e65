package bridge

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

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
	// ErrInvalid means the server refused a request as malformed, or the
	// gateway did before asking it: a stream configuration it does not
	// accept, a bad stream name, a bad start position.
	ErrInvalid = errors.New("refused as invalid")
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
	return c.jsRaw(ctx, func(ctx context.Context) error { return fn(ctx, c.js()) })
}

// jsRaw is jsCall for calls that use the connection itself (raw API
// requests whose JSON is passed through as the server wrote it). Without
// a deadline in ctx the call gets ConfirmTimeout.
func (c *Conn) jsRaw(ctx context.Context, fn func(ctx context.Context) error) error {
	if err := c.jsUsable(); err != nil {
		return err
	}
	if err := c.repliesError(); err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.pool.cfg.ConfirmTimeout)
		defer cancel()
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := c.perms.watch(jsAPIPrefix+">", cancel)
	defer stop()
	err := fn(ctx)
	if err == nil {
		return nil
	}
	if cause := context.Cause(ctx); errors.Is(cause, ErrForbidden) {
		return cause
	}
	return mapJSError(err)
}

// errEmbeddedWithoutJetStream is what every JetStream call on an embedded
// server without JetStream answers, before asking anything.
var errEmbeddedWithoutJetStream = fmt.Errorf("%w: the embedded nats-server runs without it (started with --jetstream=false, or its --nats-config file has no jetstream {} block)", ErrJetStreamUnavailable)

// jsUsable is the check every JetStream call makes first: connected, and
// not an embedded server that has no JetStream at all.
func (c *Conn) jsUsable() error {
	if !c.nc.IsConnected() {
		return c.notConnected()
	}
	if e := c.pool.cfg.Server; e != nil && !e.JetStreamEnabled() {
		return errEmbeddedWithoutJetStream
	}
	return nil
}

// jsProbeTTL is how long the answer to "has this token's account
// JetStream?" is kept.
const jsProbeTTL = 2 * time.Second

// jsProbe remembers, briefly, whether the token's account has JetStream.
type jsProbe struct {
	mu  sync.Mutex
	at  time.Time
	err error // nil or ErrJetStreamUnavailable, as of at
}

// jetStreamAvailable tells "no stream holds the subject" from "there is
// no JetStream": a stored publish gets "no responders" in both cases.
// It asks the account's JetStream info through the token's connection,
// remembering the answer for jsProbeTTL. A token that may not ask
// ($JS.API.INFO forbidden) is taken to have JetStream when the server is
// external (its subject then reads as having no stream); an embedded
// server is asked directly.
func (c *Conn) jetStreamAvailable(ctx context.Context) error {
	if err := c.jsUsable(); err != nil {
		return err
	}
	p := &c.jsAvail
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.at.IsZero() && time.Since(p.at) < jsProbeTTL {
		return p.err
	}
	err := c.jsCall(ctx, func(ctx context.Context, js jetstream.JetStream) error {
		_, err := js.AccountInfo(ctx)
		return err
	})
	switch {
	case err == nil, errors.Is(err, ErrJetStreamUnavailable):
		p.at, p.err = time.Now(), err
		return err
	case errors.Is(err, ErrForbidden):
		return nil
	}
	return err // unknown: neither kept nor guessed
}

// mapJSError translates a JetStream API error. An error nats-server
// answered stays reachable with errors.As (*jetstream.APIError) beside
// the sentinel, and reads as the sentinel and the server's description.
func mapJSError(err error) error {
	var apiErr *jetstream.APIError
	switch {
	case errors.As(err, &apiErr):
		return &jsAPIError{kind: apiErrorKind(apiErr), api: apiErr}
	case errors.Is(err, nats.ErrNoResponders):
		// Nothing answers the JetStream API: the server (or the
		// account) runs no JetStream. A stored publish gets the same
		// when no stream holds its subject; it asks jetStreamAvailable
		// rather than come here.
		return fmt.Errorf("%w: nothing answers the JetStream API ($JS.API) for this account", ErrJetStreamUnavailable)
	case errors.Is(err, jetstream.ErrNoStreamResponse):
		return fmt.Errorf("%w: %v", ErrNoStream, err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return fmt.Errorf("%w: JetStream did not answer in time: %v", ErrUnavailable, err)
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}

// apiErrorKind is the sentinel for an error nats-server answered.
func apiErrorKind(e *jetstream.APIError) error {
	switch {
	case e.ErrorCode == jetstream.JSErrCodeJetStreamNotEnabled, e.ErrorCode == jetstream.JSErrCodeJetStreamNotEnabledForAccount:
		return ErrJetStreamUnavailable
	case e.ErrorCode == jetstream.JSErrCodeStreamNotFound:
		return ErrNoStream
	case e.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum:
		return ErrPayloadTooLarge
	case e.ErrorCode == jetstream.JSErrCodeStreamNameInUse, e.Code == http.StatusConflict, conflictCodes[e.ErrorCode]:
		return ErrConflict
	case e.Code == http.StatusNotFound:
		return ErrNoStream
	case e.Code == http.StatusServiceUnavailable, e.Code == http.StatusTooManyRequests:
		return ErrUnavailable
	}
	// nats-server answers many invalid requests (stream configurations
	// above all) with its own code 500 (err_code 10052) and a description
	// of what is wrong: the client's fault, not ours.
	return ErrInvalid
}

// jsAPIError is an error nats-server answered, with its sentinel.
type jsAPIError struct {
	kind error
	api  *jetstream.APIError
}

func (e *jsAPIError) Error() string   { return e.kind.Error() + ": " + e.api.Description }
func (e *jsAPIError) Unwrap() []error { return []error{e.kind, e.api} }

// conflictCodes are nats-server's error codes (server/errors.json) for a
// publish whose expectation the stream's state does not meet; the server
// answers them with code 400.
var conflictCodes = map[jetstream.ErrorCode]bool{
	jetstream.JSErrCodeStreamWrongLastSequence:         true, // Nats-Expected-Last-Sequence, -Last-Subject-Sequence
	jetstream.JSErrCodeStreamWrongLastSequenceConstant: true, // the same on replicated streams
	10070: true, // JSStreamWrongLastMsgIDErrF: Nats-Expected-Last-Msg-Id
	10060: true, // JSStreamNotMatchErr: Nats-Expected-Stream
}
