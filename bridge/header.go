package bridge

import "fmt"

// MaxHeaderBytes bounds the total size of the NATS headers of one message.
const MaxHeaderBytes = 64 << 10

// ValidateHeader checks one NATS header: the name an HTTP token (RFC 9110
// tchar, so no ':' and no whitespace) and the value free of CR, LF and other
// control characters (horizontal tab allowed), since NATS headers travel in
// an HTTP/1-style block that those would break.
func ValidateHeader(name string, values []string) error {
	if name == "" {
		return fmt.Errorf("%w: empty header name", ErrBadHeader)
	}
	for i := 0; i < len(name); i++ {
		if !isTchar(name[i]) {
			return fmt.Errorf("%w: header name %q has a character not allowed in a header name", ErrBadHeader, name)
		}
	}
	for _, v := range values {
		for i := 0; i < len(v); i++ {
			if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
				return fmt.Errorf("%w: header %q has a control character (CR, LF or similar) in its value", ErrBadHeader, name)
			}
		}
	}
	return nil
}

// ValidateHeaders checks every header of a message and their total size.
func ValidateHeaders(h map[string][]string) error {
	size := 0
	for name, values := range h {
		if err := ValidateHeader(name, values); err != nil {
			return err
		}
		for _, v := range values {
			size += len(name) + len(v) + 4
		}
	}
	if size > MaxHeaderBytes {
		return fmt.Errorf("%w: headers larger than %d bytes", ErrBadHeader, MaxHeaderBytes)
	}
	return nil
}

func isTchar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}
