package bridge

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// DefaultMaxSubjectLen is the subject length limit used when none is set.
const DefaultMaxSubjectLen = 256

// ValidatePublishSubject checks a subject for publishing or requesting, and
// reply subjects: a valid NATS subject of at most maxLen bytes (0 means
// DefaultMaxSubjectLen) with no wildcard tokens.
func ValidatePublishSubject(subject string, maxLen int) error {
	return validateSubject(subject, maxLen, false)
}

// ValidateSubscribeSubject checks a subject for subscribing: like
// ValidatePublishSubject, but "*" tokens and a final ">" token are allowed.
func ValidateSubscribeSubject(subject string, maxLen int) error {
	return validateSubject(subject, maxLen, true)
}

// ValidateQueue checks a queue group name: non-empty, at most maxLen bytes,
// printable UTF-8 without whitespace.
func ValidateQueue(queue string, maxLen int) error {
	if maxLen <= 0 {
		maxLen = DefaultMaxSubjectLen
	}
	switch {
	case queue == "":
		return fmt.Errorf("%w: empty queue group", ErrBadSubject)
	case len(queue) > maxLen:
		return fmt.Errorf("%w: queue group longer than %d bytes", ErrBadSubject, maxLen)
	}
	if err := checkChars(queue); err != nil {
		return fmt.Errorf("%w: queue group %s", ErrBadSubject, err)
	}
	return nil
}

func validateSubject(subject string, maxLen int, wildcards bool) error {
	if maxLen <= 0 {
		maxLen = DefaultMaxSubjectLen
	}
	switch {
	case subject == "":
		return fmt.Errorf("%w: empty subject", ErrBadSubject)
	case len(subject) > maxLen:
		return fmt.Errorf("%w: subject longer than %d bytes", ErrBadSubject, maxLen)
	}
	if err := checkChars(subject); err != nil {
		return fmt.Errorf("%w: subject %s", ErrBadSubject, err)
	}
	start := 0
	for i := 0; i <= len(subject); i++ {
		if i < len(subject) && subject[i] != '.' {
			continue
		}
		tok, last := subject[start:i], i == len(subject)
		switch {
		case tok == "":
			return fmt.Errorf("%w: subject %q has an empty token", ErrBadSubject, subject)
		case (tok == "*" || tok == ">") && !wildcards:
			return fmt.Errorf("%w: subject %q has a wildcard; publish and request subjects must be literal", ErrBadSubject, subject)
		case tok == ">" && !last:
			return fmt.Errorf("%w: subject %q has '>' before its last token", ErrBadSubject, subject)
		}
		start = i + 1
	}
	return nil
}

// checkChars rejects what NATS cannot carry in a subject: whitespace,
// control characters and invalid UTF-8.
func checkChars(s string) error {
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			return fmt.Errorf("is not valid UTF-8")
		case r <= ' ' || r == 0x7f || r == 0x85 || r == 0xa0 || r == 0x2028 || r == 0x2029:
			return fmt.Errorf("contains whitespace or a control character")
		}
	}
	return nil
}
