package httpapi

import (
	"strconv"

	"github.com/natsgate/natsgate/bridge"
)

// closedNotice ends a stream whose token's NATS connection closed for
// good, saying why: {"op":"status","nats":"closed","reason":"token revoked"}.
func closedNotice(c *bridge.Conn) notice {
	reason := c.CloseReason()
	return notice{op: "status", text: "nats closed: " + reason,
		json: `{"op":"status","nats":"closed","reason":` + strconv.Quote(reason) + `}`}
}
