package httpapi

import (
	"strconv"

	"github.com/natsgate/natsgate/bridge"
)

// expiredNotice ends a stream whose token expired (an OIDC token's).
var expiredNotice = statusNotice("auth", "expired")

// closedNotice ends a stream whose token's NATS connection closed for
// good, saying why: {"op":"status","nats":"closed","reason":"token revoked"},
// or {"op":"status","auth":"expired"} when the token expired.
func closedNotice(c *bridge.Conn) notice {
	reason := c.CloseReason()
	if reason == bridge.ReasonTokenExpired {
		return expiredNotice
	}
	return notice{op: "status", text: "nats closed: " + reason,
		json: `{"op":"status","nats":"closed","reason":` + strconv.Quote(reason) + `}`}
}
