package ledger

import (
	"slices"
	"strings"
)

// RolePolicy says how a certificate shows that it belongs to an admin, and
// which organisation's admins may mint. Every other role is granted on the
// ledger (roles.go), not read from certificates.
type RolePolicy struct {
	MintMSPID     string // the only organisation whose admins may mint
	AdminOU       string // the NodeOU of admin certificates ("admin" with cryptogen)
	RoleAttribute string // Fabric CA attribute whose value "admin" also makes an admin
}

// DefaultRolePolicy fits the local network built with cryptogen: Org1 is the provider.
var DefaultRolePolicy = RolePolicy{MintMSPID: "Org1MSP", AdminOU: "admin", RoleAttribute: "streamledger.role"}

// PolicyFromEnv reads STREAMLEDGER_MINT_MSPID (or, for older deployments,
// STREAMLEDGER_ADMIN_MSPID), STREAMLEDGER_ADMIN_OU and
// STREAMLEDGER_ROLE_ATTRIBUTE, keeping the default for any that is unset.
func PolicyFromEnv(lookup func(string) (string, bool)) RolePolicy {
	p := DefaultRolePolicy
	set := func(field *string, names ...string) {
		for _, name := range names {
			if v, ok := lookup(name); ok && v != "" {
				*field = v
				return
			}
		}
	}
	set(&p.MintMSPID, "STREAMLEDGER_MINT_MSPID", "STREAMLEDGER_ADMIN_MSPID")
	set(&p.AdminOU, "STREAMLEDGER_ADMIN_OU")
	set(&p.RoleAttribute, "STREAMLEDGER_ROLE_ATTRIBUTE")
	return p
}

// IdentityFacts is what the contract reads from the client certificate.
type IdentityFacts struct {
	MSPID   string
	Subject string // the certificate subject DN, e.g. "CN=User1@org1.example.com,OU=client,..."
	OUs     []string
	Role    string // value of the role attribute, "" when absent
	// Certificate is the creator's X.509 certificate (DER). Freeze records it
	// in the hold, so that receipts are checked against the key that froze.
	Certificate []byte
}

// Caller is who a transaction runs as: the certificate's account and admin
// flag, and the roles granted to that account on the ledger. WhoAmI returns it.
type Caller struct {
	Account string
	MSPID   string
	IsAdmin bool     // from the certificate; an admin of any organisation
	Roles   []string // granted on the ledger, sorted, never null
	ActsFor string   // the provider account this caller acts for; "" unless it holds provider
}

// AccountID names the account of an identity: MSP id and certificate subject,
// unique for certificates of one CA and readable in audits.
func AccountID(mspID, subject string) string { return mspID + "::" + subject }

// accountMSP checks that id is an account id ("MSPID::subject") and returns its MSP id.
func accountMSP(field, id string) (string, error) {
	if err := checkAccountID(field, id); err != nil {
		return "", err
	}
	mspID, subject, found := strings.Cut(id, "::")
	if !found || mspID == "" || subject == "" {
		return "", fail(CodeInvalidArgument, field, "must be an account id \"<MSP id>::<certificate subject>\", got %q", id)
	}
	return mspID, nil
}

// Classify reads the certificate alone: the account and whether it is an
// admin. The roles granted on the ledger are added by New.
func (p RolePolicy) Classify(f IdentityFacts) (Caller, error) {
	if f.MSPID == "" {
		return Caller{}, fail(CodeForbidden, "creator", "client identity has no MSP id")
	}
	if f.Subject == "" {
		return Caller{}, fail(CodeForbidden, "creator", "client identity has no X.509 subject")
	}
	return Caller{
		Account: AccountID(f.MSPID, f.Subject),
		MSPID:   f.MSPID,
		IsAdmin: f.Role == RoleAdmin || (p.AdminOU != "" && slices.Contains(f.OUs, p.AdminOU)),
		Roles:   []string{},
	}, nil
}

// Has reports whether role was granted to the caller.
func (c Caller) Has(role string) bool { return slices.Contains(c.Roles, role) }

// providerFor: the caller holds provider and acts for account.
func (c Caller) providerFor(account string) bool { return c.Has(RoleProvider) && c.ActsFor == account }

// speaksFor: the caller owns account, or is a provider acting for it.
func (c Caller) speaksFor(account string) bool { return c.Account == account || c.providerFor(account) }
