// Package contract exposes the StreamLedger rules (package ledger) as a
// Fabric contract: each transaction is a thin adapter that reads who calls
// and when from the transaction context, then applies one rule.
package contract

import (
	"fmt"

	"github.com/hyperledger/fabric-contract-api-go/v2/contractapi"

	"github.com/streamledger/streamledger/chaincode/ledger"
)

// Name is the contract name; it is also the chaincode's default contract, so
// clients may call "Mint" as well as "StreamLedger:Mint".
const Name = "StreamLedger"

type Contract struct {
	contractapi.Contract
	Settings ledger.Settings
}

func New(settings ledger.Settings) *Contract {
	c := &Contract{Settings: settings}
	c.Name = Name
	c.Info.Title = "StreamLedger credit, holds, anchors and model registry"
	c.Info.Version = "1.0.0"
	return c
}

// GetEvaluateTransactions marks read-only transactions in the metadata, so
// gateway clients know to evaluate rather than submit them.
func (c *Contract) GetEvaluateTransactions() []string {
	return []string{"Balance", "GetHold", "HoldsOf", "GetAnchor", "GetTopic", "GetModel", "GetRoles", "History", "WhoAmI"}
}

// GetIgnoredFunctions keeps the adapter's own helpers out of the chaincode API.
func (c *Contract) GetIgnoredFunctions() []string { return []string{"GetEvaluateTransactions"} }

// ledgerFor binds the rules to this transaction's state, caller (its
// certificate; package ledger adds its granted roles) and timestamp (the
// client's, which every endorsing peer checks against its own clock within
// peer.authentication.timewindow).
func (c *Contract) ledgerFor(ctx contractapi.TransactionContextInterface) (*ledger.Ledger, error) {
	ci := ctx.GetClientIdentity()
	if ci == nil {
		return nil, fmt.Errorf("%s: %q: the transaction has no readable client identity", ledger.CodeForbidden, "creator")
	}
	mspID, err := ci.GetMSPID()
	if err != nil {
		return nil, fmt.Errorf("%s: %q: reading the client MSP id: %w", ledger.CodeForbidden, "creator", err)
	}
	cert, err := ci.GetX509Certificate()
	if err != nil || cert == nil {
		return nil, fmt.Errorf("%s: %q: the client identity is not an X.509 certificate (%v)", ledger.CodeForbidden, "creator", err)
	}
	role, _, err := ci.GetAttributeValue(c.Settings.RoleAttribute)
	if err != nil {
		return nil, fmt.Errorf("%s: %q: reading attribute %s: %w", ledger.CodeForbidden, "creator", c.Settings.RoleAttribute, err)
	}
	facts := ledger.IdentityFacts{MSPID: mspID, Subject: cert.Subject.String(), OUs: cert.Subject.OrganizationalUnit, Role: role, Certificate: cert.Raw}
	stub := ctx.GetStub()
	ts, err := stub.GetTxTimestamp()
	if err != nil {
		return nil, fmt.Errorf("reading the transaction timestamp: %w", err)
	}
	return ledger.New(stubState{stub}, c.Settings, facts, ts.AsTime(), stub.GetTxID())
}

// Mint creates amount of credit in account (an admin of the mint MSP only).
func (c *Contract) Mint(ctx contractapi.TransactionContextInterface, account string, amount int64) (*ledger.Account, error) {
	l, err := c.ledgerFor(ctx)
	if err != nil {
		return nil, err
	}
	a, err := l.Mint(account, amount)
	return ptr(a, err)
}

// Transfer moves amount from the caller's account to account to.
func (c *Contract) Transfer(ctx contractapi.TransactionContextInterface, to string, amount int64) (*ledger.TransferResult, error) {
	l, err := c.ledgerFor(ctx)
	if err != nil {
		return nil, err
	}
	r, err := l.Transfer(to, amount)
	return ptr(r, err)
}

// Balance reads an account.
func (c *Contract) Balance(ctx contractapi.TransactionContextInterface, account string) (*ledger.Account, error) {
	l, err := c.ledgerFor(ctx)
	if err != nil {
		return nil, err
	}
	a, err := l.Balance(account)
	return ptr(a, err)
}

// WhoAmI returns the caller's account id and roles as the contract sees them (anyone may ask).
func (c *Contract) WhoAmI(ctx contractapi.TransactionContextInterface) (*ledger.Caller, error) {
	l, err := c.ledgerFor(ctx)
	if err != nil {
		return nil, err
	}
	caller := l.WhoAmI()
	return &caller, nil
}

// Freeze moves amount of the caller's credit into hold HoldID(caller,
// nonce) for provider at pricePerUnit, until expiresAt (unix seconds), with
// settlementWindowSeconds after it for the provider to settle (0: the minimum).
func (c *Contract) Freeze(ctx contractapi.TransactionContextInterface, nonce, provider string, amount, pricePerUnit, expiresAt, settlementWindowSeconds int64) (*ledger.Hold, error) {
	l, err := c.ledgerFor(ctx)
	if err != nil {
		return nil, err
	}
	h, err := l.Freeze(nonce, provider, amount, pricePerUnit, expiresAt, settlementWindowSeconds)
	return ptr(h, err)
}

// Authorize reserves amount of a live hold before serving (a provider acting for the hold's provider).
func (c *Contract) Authorize(ctx contractapi.TransactionContextInterface, holdID string, amount int64) (*ledger.Hold, error) {
	l, err := c.ledgerFor(ctx)
	if err != nil {
		return nil, err
	}
	h, err := l.Authorize(holdID, amount)
	return ptr(h, err)
}

// RecordReceipt keeps the client's latest signed receipt on the hold without settling it.
func (c *Contract) RecordReceipt(ctx contractapi.TransactionContextInterface, holdID string, units, sequence int64, signature string) (*ledger.Hold, error) {
	l, err := c.ledgerFor(ctx)
	if err != nil {
		return nil, err
	}
	h, err := l.RecordReceipt(holdID, units, sequence, signature)
	return ptr(h, err)
}

// Settle pays the provider for the client's signed receipt (sequence 0: the
// one recorded, if any) and refunds the rest, once.
func (c *Contract) Settle(ctx contractapi.TransactionContextInterface, holdID string, units, sequence int64, signature string) (*ledger.Settlement, error) {
	l, err := c.ledgerFor(ctx)
	if err != nil {
		return nil, err
	}
	s, err := l.Settle(holdID, units, sequence, signature)
	return ptr(s, err)
}

// Release closes an open hold on its recorded receipt, refunding the rest to its client.
func (c *Contract) Release(ctx contractapi.TransactionContextInterface, holdID string) (*ledger.Hold, error) {
	l, err := c.ledgerFor(ctx)
	if err != nil {
		return nil, err
	}
	h, err := l.Release(holdID)
	return ptr(h, err)
}

// GetHold reads a hold.
func (c *Contract) GetHold(ctx contractapi.TransactionContextInterface, holdID string) (*ledger.Hold, error) {
	l, err := c.ledgerFor(ctx)
	if err != nil {
		return nil, err
	}
	h, err := l.GetHold(holdID)
	return ptr(h, err)
}

// HoldsOf lists the holds an account is the client or provider of.
func (c *Contract) HoldsOf(ctx contractapi.TransactionContextInterface, account string) ([]ledger.Hold, error) {
	l, err := c.ledgerFor(ctx)
	if err != nil {
		return nil, err
	}
	return l.HoldsOf(account)
}

// AnchorBatch records the Merkle root of a batch of records (operator only).
func (c *Contract) AnchorBatch(ctx contractapi.TransactionContextInterface, batchID, merkleRoot string, count, firstOffset, lastOffset int64) (*ledger.Anchor, error) {
	l, err := c.ledgerFor(ctx)
	if err != nil {
		return nil, err
	}
	a, err := l.AnchorBatch(batchID, merkleRoot, count, firstOffset, lastOffset)
	return ptr(a, err)
}

// GetAnchor reads an anchored batch.
func (c *Contract) GetAnchor(ctx contractapi.TransactionContextInterface, batchID string) (*ledger.Anchor, error) {
	l, err := c.ledgerFor(ctx)
	if err != nil {
		return nil, err
	}
	a, err := l.GetAnchor(batchID)
	return ptr(a, err)
}

// GetTopic reads which operator account anchors a topic.
func (c *Contract) GetTopic(ctx contractapi.TransactionContextInterface, topic string) (*ledger.Topic, error) {
	l, err := c.ledgerFor(ctx)
	if err != nil {
		return nil, err
	}
	t, err := l.GetTopic(topic)
	return ptr(t, err)
}

// RegisterModel records a model version's snapshot hash (operator only).
func (c *Contract) RegisterModel(ctx contractapi.TransactionContextInterface, modelID string, version int64, sha256 string) (*ledger.Model, error) {
	l, err := c.ledgerFor(ctx)
	if err != nil {
		return nil, err
	}
	m, err := l.RegisterModel(modelID, version, sha256)
	return ptr(m, err)
}

// GetModel reads a model version; version 0 is the latest.
func (c *Contract) GetModel(ctx contractapi.TransactionContextInterface, modelID string, version int64) (*ledger.Model, error) {
	l, err := c.ledgerFor(ctx)
	if err != nil {
		return nil, err
	}
	m, err := l.GetModel(modelID, version)
	return ptr(m, err)
}

// GrantRole gives role to account, acting for actsFor when the role is
// provider ("" = the account itself); an admin of the account's MSP only.
func (c *Contract) GrantRole(ctx contractapi.TransactionContextInterface, account, role, actsFor string) (*ledger.RoleRecord, error) {
	l, err := c.ledgerFor(ctx)
	if err != nil {
		return nil, err
	}
	r, err := l.GrantRole(account, role, actsFor)
	return ptr(r, err)
}

// RevokeRole takes role from account; an admin of the account's MSP only.
func (c *Contract) RevokeRole(ctx contractapi.TransactionContextInterface, account, role string) (*ledger.RoleRecord, error) {
	l, err := c.ledgerFor(ctx)
	if err != nil {
		return nil, err
	}
	r, err := l.RevokeRole(account, role)
	return ptr(r, err)
}

// GetRoles reads the roles granted to account.
func (c *Contract) GetRoles(ctx contractapi.TransactionContextInterface, account string) (*ledger.RoleRecord, error) {
	l, err := c.ledgerFor(ctx)
	if err != nil {
		return nil, err
	}
	r, err := l.GetRoles(account)
	return ptr(r, err)
}

// History lists every committed value of a contract key (auditors; admins for role: keys).
func (c *Contract) History(ctx contractapi.TransactionContextInterface, key string) ([]ledger.HistoryEntry, error) {
	l, err := c.ledgerFor(ctx)
	if err != nil {
		return nil, err
	}
	return l.History(key)
}

func ptr[T any](v T, err error) (*T, error) {
	if err != nil {
		return nil, err
	}
	return &v, nil
}

// NewChaincode builds the chaincode with this contract as the default.
func NewChaincode(settings ledger.Settings) (*contractapi.ContractChaincode, error) {
	cc, err := contractapi.NewChaincode(New(settings))
	if err != nil {
		return nil, fmt.Errorf("building the StreamLedger chaincode: %w", err)
	}
	cc.DefaultContract = Name
	cc.Info.Title = "streamledger"
	cc.Info.Version = "1.0.0"
	return cc, nil
}
