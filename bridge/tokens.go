package bridge

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/nats-io/nats-server/v2/server"
	"golang.org/x/crypto/bcrypt"
)

// TokenKey identifies a token without holding it: its SHA-256. The pool
// and the authenticator key tokens by it; it stays in memory. Logs show
// its String, a keyed fingerprint, never the key itself.
type TokenKey [sha256.Size]byte

// KeyOf returns the key of a token.
func KeyOf(token string) TokenKey { return sha256.Sum256([]byte(token)) }

// fingerprintKey keys token fingerprints. It is drawn at random when the
// process starts and never leaves it, so a fingerprint in a log line
// cannot be checked against guessed tokens offline, as an unsalted hash
// could.
var fingerprintKey = func() []byte {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand crashes the program instead)
	return b
}()

// String returns the token's fingerprint, safe to log: "fp:" and 12 hex
// digits (48 bits) of HMAC-SHA256(fingerprintKey, key). It tells one
// token's log lines from another's within one run of the process; it
// changes when the process restarts.
func (k TokenKey) String() string {
	m := hmac.New(sha256.New, fingerprintKey)
	m.Write(k[:])
	return "fp:" + hex.EncodeToString(m.Sum(nil)[:6])
}

// LogValue logs a key as its fingerprint: slog's JSON handler would
// otherwise write out all 32 bytes of the unsalted SHA-256.
func (k TokenKey) LogValue() slog.Value { return slog.StringValue(k.String()) }

// Token is one entry of a tokens file: a named token with the NATS
// permissions the embedded server enforces for it.
type Token struct {
	Name      string             `json:"name"`
	Token     string             `json:"token"`
	Publish   *SubjectPermission `json:"publish,omitempty"`
	Subscribe *SubjectPermission `json:"subscribe,omitempty"`
}

// SubjectPermission lists the subjects allowed and denied; an absent or
// empty allow list allows every subject not denied, as in nats-server.
type SubjectPermission struct {
	Allow []string `json:"allow,omitempty"`
	Deny  []string `json:"deny,omitempty"`
}

// TokensFile is the format of --tokens-file.
type TokensFile struct {
	Tokens []Token `json:"tokens"`
}

// maxTokensFile bounds the size of a tokens file that ParseTokens reads.
const maxTokensFile = 16 << 20

// ParseTokens parses and validates a tokens file: every entry has a unique
// name and a unique non-empty token, and every permission subject is a
// valid (wildcards allowed) subject. Unknown fields are errors, so a typo
// in a permission cannot silently widen access. Error messages never
// include a token.
func ParseTokens(data []byte) ([]Token, error) {
	if len(data) > maxTokensFile {
		return nil, fmt.Errorf("tokens file larger than %d bytes", maxTokensFile)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f TokensFile
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("tokens file: %w", redactJSONError(data, dec.InputOffset(), err))
	}
	if dec.More() {
		return nil, errors.New("tokens file: unexpected data after the JSON object")
	}
	if len(f.Tokens) == 0 {
		return nil, errors.New(`tokens file: no tokens (want {"tokens":[{"name":…,"token":…}]})`)
	}
	names := map[string]bool{}
	keys := map[TokenKey]bool{}
	for i, t := range f.Tokens {
		switch {
		case strings.TrimSpace(t.Name) == "":
			return nil, fmt.Errorf("tokens file: entry %d has no name", i)
		case names[t.Name]:
			return nil, fmt.Errorf("tokens file: name %q is used twice", t.Name)
		case t.Token == "":
			return nil, fmt.Errorf("tokens file: %q has no token", t.Name)
		case keys[KeyOf(t.Token)]:
			return nil, fmt.Errorf("tokens file: %q has the same token as an earlier entry", t.Name)
		}
		if isBcrypt(t.Token) {
			if _, err := bcrypt.Cost([]byte(t.Token)); err != nil {
				return nil, fmt.Errorf("tokens file: %q has a malformed bcrypt hash", t.Name)
			}
		}
		names[t.Name], keys[KeyOf(t.Token)] = true, true
		for _, p := range []struct {
			what string
			sp   *SubjectPermission
		}{{"publish", t.Publish}, {"subscribe", t.Subscribe}} {
			if p.sp == nil {
				continue
			}
			for _, s := range slices.Concat(p.sp.Allow, p.sp.Deny) {
				if err := ValidateSubscribeSubject(s, 0); err != nil {
					return nil, fmt.Errorf("tokens file: %q %s: %w", t.Name, p.what, err)
				}
			}
		}
	}
	return f.Tokens, nil
}

// redactJSONError keeps a JSON syntax or type error's position but not the
// offending value, which could be a token.
func redactJSONError(data []byte, decoded int64, err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Errorf("invalid JSON at %s", position(data, se.Offset-1))
	case errors.As(err, &te):
		return fmt.Errorf("field %q must be %s, at %s", te.Field, te.Type, position(data, te.Offset-1))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("the JSON ends early, at %s", position(data, int64(len(data))))
	}
	if strings.HasPrefix(err.Error(), "json: unknown field ") {
		return fmt.Errorf("%s, before %s", strings.TrimPrefix(err.Error(), "json: "), position(data, decoded))
	}
	return errors.New("invalid JSON")
}

// position turns the index of a byte into "line L, column C" (both from
// 1, columns in bytes), what an editor shows.
func position(data []byte, i int64) string {
	i = min(max(i, 0), int64(len(data)))
	before := data[:i]
	line := bytes.Count(before, []byte("\n")) + 1
	col := len(before) - (bytes.LastIndexByte(before, '\n') + 1) + 1
	return fmt.Sprintf("line %d, column %d", line, col)
}

func isBcrypt(s string) bool {
	return strings.HasPrefix(s, "$2a$") || strings.HasPrefix(s, "$2b$") || strings.HasPrefix(s, "$2y$")
}

func (t *Token) permissions() *server.Permissions {
	if t.Publish == nil && t.Subscribe == nil {
		return nil
	}
	conv := func(sp *SubjectPermission) *server.SubjectPermission {
		if sp == nil {
			return nil
		}
		return &server.SubjectPermission{Allow: slices.Clone(sp.Allow), Deny: slices.Clone(sp.Deny)}
	}
	return &server.Permissions{Publish: conv(t.Publish), Subscribe: conv(t.Subscribe)}
}

func (t *Token) equal(o *Token) bool {
	eq := func(a, b *SubjectPermission) bool {
		if a == nil || b == nil {
			return a == b
		}
		return slices.Equal(a.Allow, b.Allow) && slices.Equal(a.Deny, b.Deny)
	}
	return t.Name == o.Name && t.Token == o.Token && eq(t.Publish, o.Publish) && eq(t.Subscribe, o.Subscribe)
}

// maxVerified bounds the cache of bcrypt tokens already verified.
const maxVerified = 4096

// tokenAuth is the embedded server's client authentication: it accepts the
// configured tokens and registers each client under its token's name with
// its token's permissions, so nats-server enforces them for the gateway and
// native clients alike.
type tokenAuth struct {
	mu       sync.RWMutex
	gen      uint64 // counts set calls
	plain    map[TokenKey]*Token
	hashed   []*Token
	verified map[TokenKey]*Token // bcrypt tokens seen, by the presented token's key
}

func newTokenAuth(tokens []Token) *tokenAuth {
	a := &tokenAuth{}
	a.set(tokens)
	return a
}

// set replaces the tokens. It returns the names whose token was removed
// or whose entry changed, and the keys of the tokens under those names
// that clients have presented, so their connections can be closed.
func (a *tokenAuth) set(tokens []Token) (changed []string, keys []TokenKey) {
	plain := make(map[TokenKey]*Token)
	var hashed []*Token
	byName := make(map[string]*Token)
	for i := range tokens {
		t := &tokens[i]
		byName[t.Name] = t
		if isBcrypt(t.Token) {
			hashed = append(hashed, t)
		} else {
			plain[KeyOf(t.Token)] = t
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	gone := make(map[string]bool)
	for _, old := range slices.Concat(slices.Collect(maps.Values(a.plain)), a.hashed) {
		if nt, ok := byName[old.Name]; !ok || !nt.equal(old) {
			gone[old.Name] = true
			changed = append(changed, old.Name)
		}
	}
	for k, t := range a.plain {
		if gone[t.Name] {
			keys = append(keys, k)
		}
	}
	for k, t := range a.verified {
		if gone[t.Name] {
			keys = append(keys, k)
		}
	}
	a.plain, a.hashed, a.verified = plain, hashed, make(map[TokenKey]*Token)
	a.gen++
	slices.Sort(changed)
	return changed, keys
}

// findLocked finds the entry of a presented token among the plain
// tokens and the bcrypt tokens already verified, comparing in constant
// time. Lock (read) held.
func (a *tokenAuth) findLocked(key TokenKey) *Token {
	if t := a.plain[key]; t != nil {
		if k := KeyOf(t.Token); subtle.ConstantTimeCompare(k[:], key[:]) == 1 {
			return t
		}
		return nil
	}
	return a.verified[key]
}

// matchHashed finds the bcrypt entry a presented token matches. It is
// slow (by design) and so runs without the lock.
func matchHashed(hashed []*Token, token string) *Token {
	for _, h := range hashed {
		if bcrypt.CompareHashAndPassword([]byte(h.Token), []byte(token)) == nil {
			return h
		}
	}
	return nil
}

// maxDecideAttempts bounds how often one authentication starts over
// because reloads kept coming while its bcrypt comparison ran.
const maxDecideAttempts = 3

// name returns the name of the entry whose token has this key, if known.
func (a *tokenAuth) name(key TokenKey) (string, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if t := a.plain[key]; t != nil {
		return t.Name, true
	}
	if t := a.verified[key]; t != nil {
		return t.Name, true
	}
	return "", false
}

// Check implements server.Authentication. The bcrypt comparison runs
// without the lock, against the tokens of one generation; the decision
// and the client's registration under its user name are then made under
// the lock, and only if no reload (set) came in between: otherwise the
// token is judged again against the new tokens. A reload therefore either
// comes first, and this client is judged by the new tokens, or after,
// and finds this client under its name (to disconnect it) and its key
// among the verified (for Pool.Forget).
func (a *tokenAuth) Check(c server.ClientAuthentication) bool {
	opts := c.GetOpts()
	if opts == nil || opts.Token == "" {
		return false
	}
	return a.decide(opts.Token, func(t *Token) {
		c.RegisterUser(&server.User{Username: t.Name, Permissions: t.permissions()})
	}) != nil
}

// lookup finds the entry token matches in the set in force, as Check
// decides it (the callout service's way in).
func (a *tokenAuth) lookup(token string) *Token { return a.decide(token, nil) }

// decide finds the entry token matches. The bcrypt comparison runs
// without the lock, against one version of the tokens; the decision is
// taken under the lock, and only if no reload came in between (else it
// starts over against the new tokens), so a reload either judges this
// client by the new file or finds it registered (by admit, under the
// lock) to disconnect it.
func (a *tokenAuth) decide(token string, admit func(*Token)) *Token {
	key := KeyOf(token)
	for range maxDecideAttempts {
		a.mu.RLock()
		gen, t, hashed := a.gen, a.findLocked(key), a.hashed
		a.mu.RUnlock()
		verified := false
		if t == nil {
			t = matchHashed(hashed, token)
			verified = t != nil
		}
		a.mu.Lock()
		if a.gen != gen {
			a.mu.Unlock()
			continue // reloaded meanwhile: decide against the new tokens
		}
		if t != nil {
			if verified {
				if len(a.verified) >= maxVerified {
					clear(a.verified)
				}
				a.verified[key] = t
			}
			if admit != nil {
				admit(t)
			}
		}
		a.mu.Unlock()
		return t
	}
	return nil
}
