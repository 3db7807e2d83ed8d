package ledger

import (
	"strings"
	"testing"
)

func TestSettingsFromEnv(t *testing.T) {
	settings := func(env map[string]string) (Settings, error) {
		return SettingsFromEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	}
	s, err := settings(nil)
	if err != nil || s != DefaultSettings || s.MinSettlementWindowSeconds != 1800 {
		t.Errorf("no variables: %+v %v, want the default", s, err)
	}
	s, err = settings(map[string]string{"STREAMLEDGER_MIN_SETTLEMENT_WINDOW_SECONDS": "20", "STREAMLEDGER_MINT_MSPID": "Org2MSP"})
	if err != nil || s.MinSettlementWindowSeconds != 20 || s.MintMSPID != "Org2MSP" {
		t.Errorf("from env: %+v %v", s, err)
	}
	for _, bad := range []string{"0", "-5", "ten", "1.5", "2592001"} {
		_, err := settings(map[string]string{"STREAMLEDGER_MIN_SETTLEMENT_WINDOW_SECONDS": bad})
		if err == nil || !strings.Contains(err.Error(), "STREAMLEDGER_MIN_SETTLEMENT_WINDOW_SECONDS") {
			t.Errorf("%q: want an error naming the variable, got %v", bad, err)
		}
	}
}
