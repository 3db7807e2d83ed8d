package ledger

import (
	"errors"
	"fmt"
)

// Code classifies a rejected transaction. It leads every error message, so a
// client that only sees the endorsement message text can still act on it.
type Code string

const (
	CodeInvalidArgument   Code = "INVALID_ARGUMENT"
	CodeForbidden         Code = "FORBIDDEN"
	CodeNotFound          Code = "NOT_FOUND"
	CodeInsufficientFunds Code = "INSUFFICIENT_FUNDS"
	CodeExceedsHold       Code = "EXCEEDS_HOLD"
	CodeHoldExpired       Code = "HOLD_EXPIRED"  // past expires_at: no more reservations
	CodeWindowOpen        Code = "WINDOW_OPEN"   // before settle_by: the client may not release yet
	CodeWindowClosed      Code = "WINDOW_CLOSED" // from settle_by on: the provider may no longer settle or record receipts
	CodeAlreadySettled    Code = "ALREADY_SETTLED"
	CodeHoldClosed        Code = "HOLD_CLOSED"
	CodeInvalidReceipt    Code = "INVALID_RECEIPT" // the signature does not verify against the hold's client certificate
	CodeStaleReceipt      Code = "STALE_RECEIPT"   // a lower sequence, or fewer units, than the receipt recorded
	CodeConflict          Code = "CONFLICT"
)

// Sentinels for errors.Is: errors.Is(err, ledger.ErrAlreadySettled).
var (
	ErrInvalidArgument   = &Error{Code: CodeInvalidArgument}
	ErrForbidden         = &Error{Code: CodeForbidden}
	ErrNotFound          = &Error{Code: CodeNotFound}
	ErrInsufficientFunds = &Error{Code: CodeInsufficientFunds}
	ErrExceedsHold       = &Error{Code: CodeExceedsHold}
	ErrHoldExpired       = &Error{Code: CodeHoldExpired}
	ErrWindowOpen        = &Error{Code: CodeWindowOpen}
	ErrWindowClosed      = &Error{Code: CodeWindowClosed}
	ErrAlreadySettled    = &Error{Code: CodeAlreadySettled}
	ErrHoldClosed        = &Error{Code: CodeHoldClosed}
	ErrInvalidReceipt    = &Error{Code: CodeInvalidReceipt}
	ErrStaleReceipt      = &Error{Code: CodeStaleReceipt}
	ErrConflict          = &Error{Code: CodeConflict}
)

// Error is a rule violation: the transaction is rejected and nothing is written.
// Field names the argument or key at fault.
type Error struct {
	Code   Code
	Field  string
	Detail string
}

func (e *Error) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("%s: %s", e.Code, e.Detail)
	}
	return fmt.Sprintf("%s: %q: %s", e.Code, e.Field, e.Detail)
}

// Is matches on the code alone, so the sentinels above work with errors.Is.
func (e *Error) Is(target error) bool {
	var t *Error
	return errors.As(target, &t) && t.Code == e.Code
}

func fail(code Code, field, format string, args ...any) *Error {
	return &Error{Code: code, Field: field, Detail: fmt.Sprintf(format, args...)}
}

// StateError wraps a failure of the underlying world state (not a rule
// violation), so callers can tell "rejected" from "could not read/write".
type StateError struct {
	Op  string
	Key string
	Err error
}

func (e *StateError) Error() string {
	return fmt.Sprintf("state %s %q: %v", e.Op, e.Key, e.Err)
}

func (e *StateError) Unwrap() error { return e.Err }
