// Package natsgate holds what belongs to the project as a whole: the
// OpenAPI document of its HTTP API. The gateway itself is in cmd/gateway,
// httpapi and bridge.
package natsgate

import _ "embed"

// OpenAPI is openapi.yaml, the machine-readable form of the HTTP API,
// served at /openapi.yaml and checked against real responses in tests.
//
//go:embed openapi.yaml
var OpenAPI []byte
