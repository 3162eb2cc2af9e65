package bridge

import (
	"errors"
	"time"

	"github.com/nats-io/nats.go"
)

// Reasons a connection closed for good, as CloseReason gives them.
const (
	ReasonTokenRevoked  = "token revoked"
	ReasonTokenRejected = "token rejected by the NATS server"
	ReasonTokenExpired  = "token expired"
	ReasonClosed        = "connection closed"
)

// CloseReason says why a closed connection closed: ReasonTokenRevoked
// (a tokens-file reload removed or changed its token), ReasonTokenExpired
// (the NATS user the callout issued for an OIDC token expired with it),
// ReasonTokenRejected (the server refused the token on reconnect, or
// revoked or expired it) or ReasonClosed (the gateway closed it). The connection's last error
// alone would mislead: it may be an unrelated, earlier asynchronous error
// such as a permissions violation.
func (c *Conn) CloseReason() string {
	if c.revoked.Load() {
		return ReasonTokenRevoked
	}
	if err := c.nc.LastError(); isAuthError(err) {
		if exp, ok := c.Expires(); ok && !time.Now().Before(exp) {
			return ReasonTokenExpired
		}
		return ReasonTokenRejected
	}
	return ReasonClosed
}

func isAuthError(err error) bool {
	return err != nil && (errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAuthExpired))
}
