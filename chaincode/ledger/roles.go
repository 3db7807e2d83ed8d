package ledger

import (
	"slices"
	"strings"
)

// Roles. RoleAdmin comes from the certificate only (see RolePolicy); the
// others are granted on the ledger by an admin of the grantee's organisation.
const (
	RoleAdmin    = "admin"    // mints (in the mint MSP), grants and revokes roles; nothing else
	RoleOperator = "operator" // anchors batches, registers models
	RoleProvider = "provider" // authorizes and settles the holds of the account it acts for
	RoleClient   = "client"   // freezes and releases its own credit, transfers from its account
	RoleAuditor  = "auditor"  // reads everything
)

// GrantableRoles lists the roles GrantRole accepts, sorted.
var GrantableRoles = []string{RoleAuditor, RoleClient, RoleOperator, RoleProvider}

// Chaincode event names of role changes; the payload is a RoleEvent.
const (
	EventRoleGranted = "RoleGranted"
	EventRoleRevoked = "RoleRevoked"
)

// RoleRecord is the roles granted to one account, stored under RoleKey(account).
type RoleRecord struct {
	Account   string   `json:"account"`
	MSPID     string   `json:"msp_id"`
	Roles     []string `json:"roles"`      // sorted, never null
	ActsFor   string   `json:"acts_for"`   // the provider account; "" unless roles has provider
	UpdatedBy string   `json:"updated_by"` // the admin account of the last change
	TxID      string   `json:"tx_id"`      // the transaction of the last change
}

// RoleEvent is the payload of RoleGranted and RoleRevoked: the role that
// changed and the record after the change.
type RoleEvent struct {
	Role string `json:"role"`
	RoleRecord
}

// roleRecord reads the roles of account; an account never granted anything
// has an empty record.
func (l *Ledger) roleRecord(account, mspID string) (RoleRecord, error) {
	r := RoleRecord{Account: account, MSPID: mspID, Roles: []string{}}
	if _, err := l.load(RoleKey(account), &r); err != nil {
		return RoleRecord{}, err
	}
	if r.Roles == nil {
		r.Roles = []string{}
	}
	return r, nil
}

// GrantRole gives role to account; only an admin of the account's
// organisation may. A provider grant acts for actsFor, an account of the same
// organisation ("" means the grantee's own account), so that several service
// identities can act for one provider account. Granting a role already held
// returns the record unchanged, without an event.
func (l *Ledger) GrantRole(account, role, actsFor string) (RoleRecord, error) {
	mspID, err := l.requireAdminOf(account)
	if err != nil {
		return RoleRecord{}, err
	}
	if err := checkGrantable(role); err != nil {
		return RoleRecord{}, err
	}
	if role != RoleProvider && actsFor != "" {
		return RoleRecord{}, fail(CodeInvalidArgument, "acts_for", "only a %s grant acts for an account; leave it empty for %s", RoleProvider, role)
	}
	if role == RoleProvider {
		if actsFor == "" {
			actsFor = account
		}
		actsForMSP, err := accountMSP("acts_for", actsFor)
		if err != nil {
			return RoleRecord{}, err
		}
		if actsForMSP != mspID {
			return RoleRecord{}, fail(CodeInvalidArgument, "acts_for", "must be an account of %s like the grantee, got one of %s", mspID, actsForMSP)
		}
	}
	r, err := l.roleRecord(account, mspID)
	if err != nil {
		return RoleRecord{}, err
	}
	if r.has(role) {
		if role == RoleProvider && r.ActsFor != actsFor {
			return RoleRecord{}, fail(CodeConflict, "acts_for", "%q is already %s for %q; revoke %s first", account, RoleProvider, r.ActsFor, RoleProvider)
		}
		return r, nil
	}
	r.Roles = append(r.Roles, role)
	slices.Sort(r.Roles)
	if role == RoleProvider {
		r.ActsFor = actsFor
	}
	return l.saveRoles(EventRoleGranted, role, r)
}

// RevokeRole takes role from account; only an admin of the account's
// organisation may. Revoking a role not held is a no-op that returns the
// record unchanged, so a retried revocation succeeds like the first.
func (l *Ledger) RevokeRole(account, role string) (RoleRecord, error) {
	mspID, err := l.requireAdminOf(account)
	if err != nil {
		return RoleRecord{}, err
	}
	if err := checkGrantable(role); err != nil {
		return RoleRecord{}, err
	}
	r, err := l.roleRecord(account, mspID)
	if err != nil {
		return RoleRecord{}, err
	}
	if !r.has(role) {
		return r, nil
	}
	r.Roles = slices.DeleteFunc(r.Roles, func(held string) bool { return held == role })
	if role == RoleProvider {
		r.ActsFor = ""
	}
	return l.saveRoles(EventRoleRevoked, role, r)
}

// GetRoles reads the roles granted to account (an empty list when none).
func (l *Ledger) GetRoles(account string) (RoleRecord, error) {
	if err := l.requireAnyRole("reading roles"); err != nil {
		return RoleRecord{}, err
	}
	mspID, err := accountMSP("account", account)
	if err != nil {
		return RoleRecord{}, err
	}
	return l.roleRecord(account, mspID)
}

// saveRoles stores a changed record, signed by this transaction, and emits its event.
func (l *Ledger) saveRoles(event, role string, r RoleRecord) (RoleRecord, error) {
	r.UpdatedBy, r.TxID = l.caller.Account, l.txID
	if err := l.store(RoleKey(r.Account), r); err != nil {
		return RoleRecord{}, err
	}
	return r, l.emit(event, RoleEvent{Role: role, RoleRecord: r})
}

func (r RoleRecord) has(role string) bool { return slices.Contains(r.Roles, role) }

// requireAdminOf lets only an admin of account's organisation change its
// roles, and returns that organisation's MSP id.
func (l *Ledger) requireAdminOf(account string) (string, error) {
	if !l.caller.IsAdmin {
		return "", fail(CodeForbidden, "creator", "only an admin may grant or revoke roles; %q is not an admin", l.caller.Account)
	}
	mspID, err := accountMSP("account", account)
	if err != nil {
		return "", err
	}
	if mspID != l.caller.MSPID {
		return "", fail(CodeForbidden, "account", "an admin of %s may change roles of %s accounts only, not of %s", l.caller.MSPID, l.caller.MSPID, mspID)
	}
	return mspID, nil
}

func checkGrantable(role string) error {
	if role == RoleAdmin {
		return fail(CodeInvalidArgument, "role", "%s cannot be granted: it comes from the certificate (admin NodeOU or role attribute)", RoleAdmin)
	}
	if !slices.Contains(GrantableRoles, role) {
		return fail(CodeInvalidArgument, "role", "must be one of %s, got %q", strings.Join(GrantableRoles, ", "), role)
	}
	return nil
}
