package ledger

import "strings"

// History lists every committed value of a contract key, for auditors. Keys
// are "account:<id>", "hold:<id>", "anchor:<batch>" or "model:<id>@<version>".
func (l *Ledger) History(key string) ([]HistoryEntry, error) {
	known := false
	for _, prefix := range []string{accountPrefix, holdPrefix, anchorPrefix, modelPrefix, latestPrefix} {
		if strings.HasPrefix(key, prefix) && len(key) > len(prefix) {
			known = true
			break
		}
	}
	if !known {
		return nil, fail(CodeInvalidArgument, "key", "must start with account:, hold:, anchor:, model: or model-latest: followed by an id, got %q", key)
	}
	entries, err := l.state.History(key)
	if err != nil {
		return nil, &StateError{Op: "history", Key: key, Err: err}
	}
	if entries == nil {
		entries = []HistoryEntry{} // an empty list, never JSON null
	}
	return entries, nil
}
