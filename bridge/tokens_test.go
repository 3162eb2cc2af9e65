package bridge

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
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

// slowHash hashes secret with bcrypt at the lowest cost that takes at
// least 300 ms here (the race detector makes bcrypt several times
// slower), so a test can act while the server is still comparing.
func slowHash(t testing.TB, secret string) string {
	t.Helper()
	for cost := 8; ; cost++ {
		start := time.Now()
		h, err := bcrypt.GenerateFromPassword([]byte(secret), cost)
		if err != nil {
			t.Fatal(err)
		}
		if time.Since(start) >= 300*time.Millisecond || cost == bcrypt.MaxCost {
			return string(h)
		}
	}
}

// acquireAsync starts Acquire and returns where its outcome arrives.
func acquireAsync(p *Pool, token string) <-chan error {
	res := make(chan error, 1)
	go func() {
		c, err := p.Acquire(context.Background(), token)
		if err == nil {
			c.Release()
		}
		res <- err
	}()
	return res
}

// stillComparing fails the test if the Acquire behind res has already
// returned: then the test would not check what it means to.
func stillComparing(t testing.TB, res <-chan error) {
	t.Helper()
	select {
	case err := <-res:
		t.Fatalf("Acquire returned (%v) before the test could act: bcrypt was too fast", err)
	default:
	}
}

// slowFirstPingHashes are bcrypt hashes of "slow-first-ping" by cost,
// made once: a test that needs a check slower than some time picks one
// instead of paying for its making too.
var slowFirstPingHashes = map[int]string{
	13: "$2a$13$ETfVvUhNsHp6V0RwiPO5/uC.BklIGTWuLIRbyzttS8Bwiu11Av7eO",
	14: "$2a$14$h0UYn7WKREGKuu8muQJwBO7hsWG17/ldc4uVNboOyVa5k5uLEHh9q",
	15: "$2a$15$u5qWfxPouiduMmxJkkr3t.87pk2XcKMCAWAdXfD8ZbFrw1TcPiVxS",
	16: "$2a$16$9da0xXetDG3kYaNqY08VjOeeF5iXYicq2cqzqSC/X0YKKRldxZGSe",
	17: "$2a$17$tpyJo6yMR9cLEIQQADOQKeaeeGEwepJJxH968BGlhERfI8.U6N.4C",
}

// TestTokenCheckSlowerThanTheFirstPingStillConnects: nats-server sends a
// new client a PING 2 s after it came unless its PONG went out first, and
// nats.go fails a connect whose first answer is that PING ("expected
// 'PONG', got 'PING'"). A token check slower than 2 s (a bcrypt token on
// a loaded machine) must still connect.
func TestTokenCheckSlowerThanTheFirstPingStillConnects(t *testing.T) {
	t.Parallel()
	// Each cost doubles the time; measure cost 10 and pick the hash whose
	// check takes at least 3 s (the PING comes 2 to 2.4 s in).
	h10, err := bcrypt.GenerateFromPassword([]byte("x"), 10)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = bcrypt.CompareHashAndPassword(h10, []byte("x"))
	per10 := time.Since(start)
	cost := 13
	for ; cost < 17 && per10<<(cost-10) < 3*time.Second; cost++ {
	}
	e := startEmbedded(t, append(testTokens(), Token{Name: "slow", Token: slowFirstPingHashes[cost]}))
	p := newTestPool(t, Config{Server: e, ConnectTimeout: time.Minute})
	start = time.Now()
	err = <-acquireAsync(p, "slow-first-ping")
	took := time.Since(start)
	if err != nil {
		t.Fatalf("a token checked in %v: %v", took, err)
	}
	if took < 2400*time.Millisecond {
		t.Fatalf("the check took %v (cost %d): too fast to test the first PING", took, cost)
	}
}

// TestBcryptCheckDuringAReloadIsDecidedByTheNewTokens: a reload that
// changes a bcrypt token's permissions while the server is comparing it
// must not let the connection in under the old permissions.
func TestBcryptCheckDuringAReloadIsDecidedByTheNewTokens(t *testing.T) {
	t.Parallel()
	hash := slowHash(t, "slow-secret")
	old := append(testTokens(), Token{Name: "slow", Token: hash, Publish: &SubjectPermission{Allow: []string{"old.>"}}})
	e := startEmbedded(t, old)
	p := newTestPool(t, Config{Server: e})
	res := acquireAsync(p, "slow-secret")
	time.Sleep(60 * time.Millisecond) // the server is comparing now
	stillComparing(t, res)
	changed, keys, err := e.SetTokens(append(testTokens(), Token{Name: "slow", Token: hash, Publish: &SubjectPermission{Allow: []string{"new.>"}}}))
	if err != nil || len(changed) != 1 {
		t.Fatalf("SetTokens: %v %v", changed, err)
	}
	p.Forget(keys...)
	select {
	case err := <-res:
		if err != nil {
			t.Fatalf("Acquire: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Acquire did not return")
	}
	c := mustAcquire(t, p, "slow-secret")
	if err := c.Publish(context.Background(), &Msg{Subject: "old.x"}, 0); !errors.Is(err, ErrForbidden) {
		t.Fatalf("publish under the removed permission: %v, want ErrForbidden", err)
	}
	if err := c.Publish(context.Background(), &Msg{Subject: "new.x"}, 0); err != nil {
		t.Fatalf("publish under the new permission: %v", err)
	}
}

// TestForgetDuringConnectStartsOver: Forget of a token whose connection
// is still being made (after the server accepted it, before the pool
// handed it out) makes Acquire connect afresh, so the connection it
// returns was judged by the tokens in force after the reload.
func TestForgetDuringConnectStartsOver(t *testing.T) {
	t.Parallel()
	e := startEmbedded(t, append(testTokens(), Token{Name: "slow", Token: slowHash(t, "slow-secret")}))
	p := newTestPool(t, Config{Server: e})
	varz, _ := e.s.Varz(nil)
	before := varz.TotalConnections
	res := acquireAsync(p, "slow-secret")
	time.Sleep(60 * time.Millisecond) // connecting: the server is comparing
	stillComparing(t, res)
	p.Forget(KeyOf("slow-secret"))
	if err := <-res; err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if varz, _ := e.s.Varz(nil); varz.TotalConnections-before != 2 {
		t.Fatalf("%d connection attempts, want 2: the connection forgotten while it was made was handed out", varz.TotalConnections-before)
	}
	c := mustAcquire(t, p, "slow-secret")
	if err := c.Publish(context.Background(), &Msg{Subject: "x"}, 0); err != nil || c.ClosedByAuth() {
		t.Fatalf("the fresh connection: %v (closed by auth %v)", err, c.ClosedByAuth())
	}
}
