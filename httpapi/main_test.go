package httpapi

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any goroutine outlives its test: sessions,
// streams, pingers, pools and embedded servers must all stop.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
