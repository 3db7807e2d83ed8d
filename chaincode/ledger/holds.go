package ledger

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
)

// Hold states: a hold is OPEN until it is settled or released, exactly once.
const (
	HoldOpen     = "OPEN"
	HoldSettled  = "SETTLED"
	HoldReleased = "RELEASED"
)

// Hold is credit moved out of the client's balance into escrow for a
// provider, at a price per unit fixed for the hold's life.
//
// Its clock: the provider reserves (Authorize) until ExpiresAt; it settles,
// or records receipts, until SettleBy = ExpiresAt + SettlementWindowSeconds;
// from SettleBy on, the client may release it. Either way the provider is
// paid what the client's latest receipt covers, and the client gets the rest.
type Hold struct {
	ID               string   `json:"hold_id"` // HoldID(client, nonce)
	Nonce            string   `json:"nonce"`
	Client           string   `json:"client"`
	ClientCert       string   `json:"client_cert"` // PEM of the certificate that froze it; receipts verify against it
	Provider         string   `json:"provider"`
	Amount           int64    `json:"amount"`         // frozen credit
	PricePerUnit     int64    `json:"price_per_unit"` // fixed at freeze
	Authorized       int64    `json:"authorized"`     // credit reserved so far by Authorize, <= amount
	Receipt          *Receipt `json:"receipt"`        // the latest receipt recorded; null until one is
	Charged          int64    `json:"charged"`        // paid to the provider when closed
	Refunded         int64    `json:"refunded"`       // returned to the client when closed
	Status           string   `json:"status"`
	ExpiresAt        int64    `json:"expires_at"`                // unix seconds
	SettlementWindow int64    `json:"settlement_window_seconds"` // after expiry, the provider's alone
	SettleBy         int64    `json:"settle_by"`                 // expires_at + window: settle before, release from
	CreatedAt        string   `json:"created_at"`
	ClosedAt         string   `json:"closed_at"`
	FreezeTxID       string   `json:"freeze_tx_id"`
	CloseTxID        string   `json:"close_tx_id"`
}

// Chaincode event names.
const (
	EventHoldFrozen      = "HoldFrozen"      // payload: Hold
	EventReceiptRecorded = "ReceiptRecorded" // payload: Receipt
	EventHoldSettled     = "HoldSettled"     // payload: Settlement
	EventHoldReleased    = "HoldReleased"    // payload: Hold
	EventBatchAnchored   = "BatchAnchored"
	EventModelRegistered = "ModelRegistered"
)

// HoldID is the id of the hold a client freezes with nonce: the first 32 hex
// digits of SHA-256("streamledger-hold/v1\n" + client + "\n" + nonce). It
// names the client, so no one can take another client's hold id; a nonce
// cannot hold a newline, so the encoding is unambiguous.
func HoldID(client, nonce string) string {
	sum := sha256.Sum256([]byte("streamledger-hold/v1\n" + client + "\n" + nonce))
	return hex.EncodeToString(sum[:16])
}

func (h Hold) expired(now int64) bool { return now >= h.ExpiresAt }

func (l *Ledger) hold(id string) (Hold, error) {
	if err := checkRecordID("hold_id", id); err != nil {
		return Hold{}, err
	}
	var h Hold
	found, err := l.load(HoldKey(id), &h)
	if err != nil {
		return Hold{}, err
	}
	if !found {
		return Hold{}, fail(CodeNotFound, "hold_id", "no hold %q", id)
	}
	return h, nil
}

// Freeze moves amount from the caller's (a client's) balance into the hold
// HoldID(caller, nonce) for provider, at pricePerUnit per unit served, until
// expiresAt; the provider then has settlementWindow seconds (0: the
// deployment's minimum) to settle. Repeating an identical Freeze returns the
// existing hold unchanged, so a retried submission never freezes twice; the
// same nonce with other terms is a CONFLICT.
func (l *Ledger) Freeze(nonce, provider string, amount, pricePerUnit, expiresAt, settlementWindow int64) (Hold, error) {
	if err := l.require(RoleClient, "freezing credit"); err != nil {
		return Hold{}, err
	}
	client := l.caller.Account
	if err := checkRecordID("nonce", nonce); err != nil {
		return Hold{}, err
	}
	// The provider must be an account id, the form a provider grant acts for.
	if _, err := accountMSP("provider", provider); err != nil {
		return Hold{}, err
	}
	if provider == client {
		return Hold{}, fail(CodeInvalidArgument, "provider", "must differ from the client %q", client)
	}
	if err := checkPositive("amount", amount); err != nil {
		return Hold{}, err
	}
	if err := checkPositive("price_per_unit", pricePerUnit); err != nil {
		return Hold{}, err
	}
	if pricePerUnit > amount {
		return Hold{}, fail(CodeInvalidArgument, "price_per_unit", "must not exceed the amount %d (the hold would pay for no unit), got %d", amount, pricePerUnit)
	}
	if expiresAt <= l.now.Unix() {
		return Hold{}, fail(CodeInvalidArgument, "expires_at", "must be in the future (unix seconds > %d), got %d", l.now.Unix(), expiresAt)
	}
	window, err := l.settlementWindow(settlementWindow)
	if err != nil {
		return Hold{}, err
	}
	settleBy, err := addChecked("expires_at", expiresAt, window)
	if err != nil {
		return Hold{}, err
	}
	certPEM, err := receiptCertificate(l.certificate)
	if err != nil {
		return Hold{}, err
	}
	id := HoldID(client, nonce)
	var existing Hold
	found, err := l.load(HoldKey(id), &existing)
	if err != nil {
		return Hold{}, err
	}
	if found {
		if existing.Provider == provider && existing.Amount == amount && existing.PricePerUnit == pricePerUnit &&
			existing.ExpiresAt == expiresAt && existing.SettlementWindow == window {
			return existing, nil
		}
		return Hold{}, fail(CodeConflict, "nonce", "nonce %q already froze hold %s with other terms; use a new nonce", nonce, id)
	}
	if _, err := l.debit("amount", client, amount); err != nil {
		return Hold{}, err
	}
	h := Hold{
		ID: id, Nonce: nonce, Client: client, ClientCert: certPEM, Provider: provider,
		Amount: amount, PricePerUnit: pricePerUnit, Status: HoldOpen,
		ExpiresAt: expiresAt, SettlementWindow: window, SettleBy: settleBy,
		CreatedAt: l.timestamp(), FreezeTxID: l.txID,
	}
	if err := l.store(HoldKey(id), h); err != nil {
		return Hold{}, err
	}
	for _, owner := range []string{client, provider} {
		if err := l.state.IndexAdd(holdsByAccount, owner, id); err != nil {
			return Hold{}, &StateError{Op: "index", Key: holdsByAccount + "/" + owner, Err: err}
		}
	}
	return h, l.emit(EventHoldFrozen, h)
}

// settlementWindow applies the deployment's bounds to a client's choice (0: the minimum).
func (l *Ledger) settlementWindow(seconds int64) (int64, error) {
	least := l.settings.MinSettlementWindowSeconds
	if seconds == 0 {
		return least, nil
	}
	if seconds < least || seconds > MaxSettlementWindowSeconds {
		return 0, fail(CodeInvalidArgument, "settlement_window_seconds", "must be 0 (the minimum, %d) or from %d to %d, got %d", least, least, MaxSettlementWindowSeconds, seconds)
	}
	return seconds, nil
}

// receiptCertificate checks that the freezing certificate has a key that can
// sign receipts, and returns it as PEM for the hold.
func receiptCertificate(der []byte) (string, error) {
	if len(der) == 0 {
		return "", fail(CodeForbidden, "creator", "the caller has no X.509 certificate to check receipts against")
	}
	if _, err := receiptKey(der); err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), nil
}

// Authorize adds amount to the credit reserved on a live hold; a provider
// acting for the hold's provider calls it before serving beyond what it has
// reserved, and it fails once the hold cannot cover it. Reservations are
// cumulative and shared by all the provider's servers: each server serves
// only within the chunks it reserved itself. Settlement never charges more
// than was reserved.
func (l *Ledger) Authorize(holdID string, amount int64) (Hold, error) {
	h, err := l.providersHold(holdID, "authorizing against a hold")
	if err != nil {
		return Hold{}, err
	}
	if err := checkPositive("amount", amount); err != nil {
		return Hold{}, err
	}
	if err := l.requireOpen(h); err != nil {
		return Hold{}, err
	}
	if h.expired(l.now.Unix()) {
		return Hold{}, fail(CodeHoldExpired, "hold_id", "hold %q expired at %d", holdID, h.ExpiresAt)
	}
	if amount > h.Amount-h.Authorized {
		return Hold{}, fail(CodeExceedsHold, "amount", "hold %q has %d left of %d, asked %d", holdID, h.Amount-h.Authorized, h.Amount, amount)
	}
	h.Authorized += amount
	return h, l.store(HoldKey(holdID), h)
}

// GetHold reads a hold, for its parties (client, provider) and auditors.
func (l *Ledger) GetHold(holdID string) (Hold, error) {
	h, err := l.hold(holdID)
	if err != nil {
		return Hold{}, err
	}
	if err := l.requireHoldParty(h); err != nil {
		return Hold{}, err
	}
	return h, nil
}

// HoldsOf lists the holds an account is the client or the provider of, by id,
// for account statements; who may read them is who may read the account.
func (l *Ledger) HoldsOf(account string) ([]Hold, error) {
	if err := checkAccountID("account", account); err != nil {
		return nil, err
	}
	if err := l.requireReaderOf("account", account); err != nil {
		return nil, err
	}
	ids, err := l.state.IndexList(holdsByAccount, account)
	if err != nil {
		return nil, &StateError{Op: "index list", Key: holdsByAccount + "/" + account, Err: err}
	}
	holds := make([]Hold, 0, len(ids))
	for _, id := range ids {
		h, err := l.hold(id)
		if err != nil {
			return nil, err
		}
		holds = append(holds, h)
	}
	return holds, nil
}

// providersHold reads a hold for a caller holding provider and acting for the hold's provider.
func (l *Ledger) providersHold(holdID, action string) (Hold, error) {
	if err := l.require(RoleProvider, action); err != nil {
		return Hold{}, err
	}
	h, err := l.hold(holdID)
	if err != nil {
		return Hold{}, err
	}
	if !l.caller.providerFor(h.Provider) {
		return Hold{}, fail(CodeForbidden, "hold_id", "hold %q is paid to %q; caller %q acts for %q", holdID, h.Provider, l.caller.Account, l.caller.ActsFor)
	}
	return h, nil
}

func (l *Ledger) requireOpen(h Hold) error {
	switch h.Status {
	case HoldOpen:
		return nil
	case HoldSettled:
		return fail(CodeAlreadySettled, "hold_id", "hold %q was already settled in tx %s", h.ID, h.CloseTxID)
	default:
		return fail(CodeHoldClosed, "hold_id", "hold %q is %s (tx %s)", h.ID, h.Status, h.CloseTxID)
	}
}
