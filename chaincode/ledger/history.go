package ledger

import "strings"

// History lists every committed value of a contract key, for auditors (and
// for admins, the history of role grants). Keys are "account:<id>",
// "hold:<id>", "anchor:<batch>", "model:<id>@<version>", "model-latest:<id>",
// "role:<account>" or "topic:<topic>".
func (l *Ledger) History(key string) ([]HistoryEntry, error) {
	known := false
	for _, prefix := range []string{accountPrefix, holdPrefix, anchorPrefix, modelPrefix, latestPrefix, rolePrefix, topicPrefix} {
		if strings.HasPrefix(key, prefix) && len(key) > len(prefix) {
			known = true
			break
		}
	}
	if !known {
		return nil, fail(CodeInvalidArgument, "key", "must start with account:, hold:, anchor:, model:, model-latest:, role: or topic: followed by an id, got %q", key)
	}
	if !(l.caller.IsAdmin && strings.HasPrefix(key, rolePrefix)) {
		if err := l.require(RoleAuditor, "reading history"); err != nil {
			return nil, err
		}
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
