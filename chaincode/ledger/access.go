package ledger

// Who may do what. Every refusal is FORBIDDEN naming the field at fault:
// "creator" when the caller lacks a role, otherwise the argument (account,
// hold_id, client) that the caller has no part in.

// require refuses a caller that was not granted role; admins included, since
// being admin grants nothing but minting and role changes.
func (l *Ledger) require(role, action string) error {
	if l.caller.Has(role) {
		return nil
	}
	return fail(CodeForbidden, "creator", "%s needs the %s role; %q holds %v%s", action, role, l.caller.Account, l.caller.Roles, l.adminHint())
}

// requireAnyRole admits any caller holding a role, and admins: the shared
// records (anchors, models, roles) are for the system's participants.
func (l *Ledger) requireAnyRole(action string) error {
	if l.caller.IsAdmin || len(l.caller.Roles) > 0 {
		return nil
	}
	return fail(CodeForbidden, "creator", "%s needs a granted role; %q holds none", action, l.caller.Account)
}

// requireReaderOf admits the owner of account, a provider acting for it, and auditors.
func (l *Ledger) requireReaderOf(field, account string) error {
	if l.caller.speaksFor(account) || l.caller.Has(RoleAuditor) {
		return nil
	}
	return fail(CodeForbidden, field, "only its owner, a %s acting for it or an %s may read account %q; caller is %q",
		RoleProvider, RoleAuditor, account, l.caller.Account)
}

// requireHoldParty admits the hold's client, a provider acting for its provider, and auditors.
func (l *Ledger) requireHoldParty(h Hold) error {
	if l.caller.speaksFor(h.Client) || l.caller.speaksFor(h.Provider) || l.caller.Has(RoleAuditor) {
		return nil
	}
	return fail(CodeForbidden, "hold_id", "only the client, the provider or an %s may read hold %q; caller is %q", RoleAuditor, h.ID, l.caller.Account)
}

func (l *Ledger) adminHint() string {
	if l.caller.IsAdmin {
		return " (being admin does not include it; grant it with GrantRole)"
	}
	return ""
}
