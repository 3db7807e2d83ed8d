package ledger

import "slices"

// Roles a certificate can carry, through the role attribute (Fabric CA) or,
// for the admin, the NodeOU "admin" that cryptogen issues.
const (
	RoleAdmin    = "admin"
	RoleOperator = "operator"
)

// RolePolicy says which identities are privileged. Only identities of
// AdminMSPID qualify, so another organisation cannot mint by naming itself admin.
type RolePolicy struct {
	AdminMSPID    string
	AdminOU       string
	RoleAttribute string
}

// DefaultRolePolicy fits the local single-org network built with cryptogen.
var DefaultRolePolicy = RolePolicy{AdminMSPID: "Org1MSP", AdminOU: "admin", RoleAttribute: "streamledger.role"}

// PolicyFromEnv reads STREAMLEDGER_ADMIN_MSPID, STREAMLEDGER_ADMIN_OU and
// STREAMLEDGER_ROLE_ATTRIBUTE, keeping the default for any that is unset.
func PolicyFromEnv(lookup func(string) (string, bool)) RolePolicy {
	p := DefaultRolePolicy
	if v, ok := lookup("STREAMLEDGER_ADMIN_MSPID"); ok && v != "" {
		p.AdminMSPID = v
	}
	if v, ok := lookup("STREAMLEDGER_ADMIN_OU"); ok && v != "" {
		p.AdminOU = v
	}
	if v, ok := lookup("STREAMLEDGER_ROLE_ATTRIBUTE"); ok && v != "" {
		p.RoleAttribute = v
	}
	return p
}

// IdentityFacts is what the contract reads from the client certificate.
type IdentityFacts struct {
	MSPID   string
	Subject string // the certificate subject DN, e.g. "CN=User1@org1.example.com,OU=client,..."
	OUs     []string
	Role    string // value of the role attribute, "" when absent
}

// Caller is the classified identity a transaction runs as.
type Caller struct {
	Account    string
	MSPID      string
	IsAdmin    bool
	IsOperator bool // may anchor batches and register models
}

// AccountID names the account of an identity: MSP id and certificate subject,
// unique for certificates of one CA and readable in audits.
func AccountID(mspID, subject string) string { return mspID + "::" + subject }

func (p RolePolicy) Classify(f IdentityFacts) (Caller, error) {
	if f.MSPID == "" {
		return Caller{}, fail(CodeForbidden, "creator", "client identity has no MSP id")
	}
	if f.Subject == "" {
		return Caller{}, fail(CodeForbidden, "creator", "client identity has no X.509 subject")
	}
	inAdminOrg := f.MSPID == p.AdminMSPID
	isAdmin := inAdminOrg && (f.Role == RoleAdmin || (p.AdminOU != "" && slices.Contains(f.OUs, p.AdminOU)))
	return Caller{
		Account:    AccountID(f.MSPID, f.Subject),
		MSPID:      f.MSPID,
		IsAdmin:    isAdmin,
		IsOperator: isAdmin || (inAdminOrg && f.Role == RoleOperator),
	}, nil
}
