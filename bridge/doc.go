// Package bridge is natsgate's NATS side: a pool holding one NATS connection
// per distinct token, confirmed publishes, request/reply, shared
// subscriptions, and the embedded nats-server. It knows nothing about HTTP;
// it reports failures as the sentinel errors in errors.go.
package bridge
