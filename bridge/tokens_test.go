package bridge

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"regexp"
	"strings"
	"testing"
)

// TestTokenFingerprintsAreKeyed: what logs show of a token is a keyed
// hash (stable within the process, different per token), never a prefix
// of its plain SHA-256, which anyone could test guessed tokens against.
func TestTokenFingerprintsAreKeyed(t *testing.T) {
	t.Parallel()
	const token = "weak-token"
	sum := sha256.Sum256([]byte(token))
	plain := hex.EncodeToString(sum[:])
	fp := KeyOf(token).String()
	if !regexp.MustCompile(`^fp:[0-9a-f]{12}$`).MatchString(fp) {
		t.Fatalf("fingerprint %q, want fp: and 12 hex digits", fp)
	}
	if strings.Contains(plain, fp[3:]) {
		t.Fatalf("fingerprint %q is part of the token's plain SHA-256 %s", fp, plain)
	}
	if again := KeyOf(token).String(); again != fp {
		t.Fatalf("fingerprint changed within the process: %q then %q", fp, again)
	}
	if other := KeyOf("other-token").String(); other == fp {
		t.Fatalf("two tokens share the fingerprint %q", fp)
	}
	// slog, text or JSON, logs a key as its fingerprint, not its bytes.
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "key", KeyOf(token))
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "key", KeyOf(token))
	if strings.Count(buf.String(), fp) != 2 {
		t.Fatalf("slog wrote a key as %s, want its fingerprint %s", buf.String(), fp)
	}

	// A token without a tokens-file name (an external server) is known
	// by its fingerprint.
	e := startEmbedded(t, testTokens())
	p := newTestPool(t, Config{URL: e.ClientURL()})
	c := mustAcquire(t, p, adminToken)
	if want := KeyOf(adminToken).String(); c.Name() != want {
		t.Fatalf("Name = %q, want the fingerprint %q", c.Name(), want)
	}
}
