package ledger

import (
	"fmt"
	"strconv"
)

// Settings are a deployment's rule parameters. Every endorsing organisation's
// chaincode server must run with the same values, or their endorsements differ
// and no transaction commits.
type Settings struct {
	RolePolicy
	// MinSettlementWindowSeconds is the least time after a hold's expiry in
	// which only its provider may close it (Settle). It must exceed every
	// endorsing peer's peer.authentication.timewindow (15 min by default), so
	// that a client stamping its Release up to that tolerance in the future
	// still cannot close a hold before the provider had its window.
	MinSettlementWindowSeconds int64
}

const (
	// DefaultMinSettlementWindowSeconds is twice Fabric's default timewindow.
	DefaultMinSettlementWindowSeconds = 1800
	// MaxSettlementWindowSeconds bounds how long credit can stay locked after expiry.
	MaxSettlementWindowSeconds = 30 * 24 * 3600
)

// DefaultSettings fit the local network built with cryptogen.
var DefaultSettings = Settings{RolePolicy: DefaultRolePolicy, MinSettlementWindowSeconds: DefaultMinSettlementWindowSeconds}

// SettingsFromEnv reads the role policy (PolicyFromEnv) and
// STREAMLEDGER_MIN_SETTLEMENT_WINDOW_SECONDS, keeping the default for any that
// is unset; a value that is set but invalid is an error, so a typo never
// silently runs with other rules than the other organisations'.
func SettingsFromEnv(lookup func(string) (string, bool)) (Settings, error) {
	s := DefaultSettings
	s.RolePolicy = PolicyFromEnv(lookup)
	const name = "STREAMLEDGER_MIN_SETTLEMENT_WINDOW_SECONDS"
	if v, ok := lookup(name); ok && v != "" {
		seconds, err := strconv.ParseInt(v, 10, 64)
		if err != nil || seconds < 1 || seconds > MaxSettlementWindowSeconds {
			return Settings{}, fmt.Errorf("%s must be a whole number of seconds from 1 to %d, got %q", name, MaxSettlementWindowSeconds, v)
		}
		s.MinSettlementWindowSeconds = seconds
	}
	return s, nil
}
