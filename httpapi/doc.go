// Package httpapi is natsgate's HTTP and WebSocket edge: the chi router,
// handlers, bearer-token extraction and RFC 9457 errors. It reaches NATS
// only through the Broker interface it declares.
package httpapi
