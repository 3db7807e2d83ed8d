package ledger

import (
	"math"
	"regexp"
	"strconv"
	"unicode"
	"unicode/utf8"
)

// Record ids (holds, batches, models) are short tokens that are safe in keys
// and logs; account ids are derived from certificates and may hold any
// printable text, so they are only bounded and checked for control characters.
var recordID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)
var sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)

const maxAccountIDLen = 1024

func checkRecordID(field, value string) error {
	if !recordID.MatchString(value) {
		return fail(CodeInvalidArgument, field,
			"must be 1-128 characters of letters, digits, '.', '_', ':' or '-', starting with a letter or digit; got %q", value)
	}
	return nil
}

func checkAccountID(field, value string) error {
	if value == "" {
		return fail(CodeInvalidArgument, field, "must not be empty")
	}
	if len(value) > maxAccountIDLen {
		return fail(CodeInvalidArgument, field, "must be at most %d bytes, got %d", maxAccountIDLen, len(value))
	}
	if !utf8.ValidString(value) {
		return fail(CodeInvalidArgument, field, "must be valid UTF-8")
	}
	for _, r := range value {
		// U+10FFFF is excluded too: Fabric reserves it (and NUL) in composite keys.
		if unicode.IsControl(r) || r == utf8.MaxRune {
			return fail(CodeInvalidArgument, field, "must not contain control characters or U+10FFFF, got %q", value)
		}
	}
	return nil
}

func checkPositive(field string, value int64) error {
	if value <= 0 {
		return fail(CodeInvalidArgument, field, "must be a positive integer, got %d", value)
	}
	return nil
}

func checkNonNegative(field string, value int64) error {
	if value < 0 {
		return fail(CodeInvalidArgument, field, "must not be negative, got %d", value)
	}
	return nil
}

func checkSHA256Hex(field, value string) error {
	if !sha256Hex.MatchString(value) {
		return fail(CodeInvalidArgument, field, "must be 64 lowercase hex characters (a SHA-256 digest), got %q", value)
	}
	return nil
}

// addChecked refuses sums that would wrap around int64 instead of silently
// creating or destroying credit.
func addChecked(field string, a, b int64) (int64, error) {
	if b > 0 && a > math.MaxInt64-b {
		return 0, fail(CodeInvalidArgument, field, "%d + %d overflows a 64-bit amount", a, b)
	}
	return a + b, nil
}

func mulChecked(field string, a, b int64) (int64, error) {
	if a != 0 && b > math.MaxInt64/a {
		return 0, fail(CodeInvalidArgument, field, "%d * %d overflows a 64-bit amount", a, b)
	}
	return a * b, nil
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }
