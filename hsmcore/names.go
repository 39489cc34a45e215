package hsmcore

import "fmt"

// checkName accepts identifiers used in certificates, headers and file
// names: 1-64 characters of [A-Za-z0-9._-].
func CheckName(s string) error {
	if len(s) == 0 || len(s) > 64 {
		return fmt.Errorf("%q must be 1-64 letters, digits, '.', '_' or '-': %w", s, ErrInvalid)
	}
	for _, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return fmt.Errorf("%q must be 1-64 letters, digits, '.', '_' or '-': %w", s, ErrInvalid)
		}
	}
	return nil
}
