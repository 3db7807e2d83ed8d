package ledger

// Hold states: a hold is OPEN until it is settled or released, exactly once.
const (
	HoldOpen     = "OPEN"
	HoldSettled  = "SETTLED"
	HoldReleased = "RELEASED"
)

// Hold is credit moved out of the client's balance into escrow for a provider.
type Hold struct {
	ID         string `json:"hold_id"`
	Client     string `json:"client"`
	Provider   string `json:"provider"`
	Amount     int64  `json:"amount"`     // frozen credit
	Authorized int64  `json:"authorized"` // reserved so far by Authorize
	Charged    int64  `json:"charged"`    // paid to the provider at settlement
	Refunded   int64  `json:"refunded"`   // returned to the client when closed
	Status     string `json:"status"`
	ExpiresAt  int64  `json:"expires_at"` // unix seconds
	CreatedAt  string `json:"created_at"`
	ClosedAt   string `json:"closed_at"`
	FreezeTxID string `json:"freeze_tx_id"`
	CloseTxID  string `json:"close_tx_id"`
}

// Settlement is the outcome of Settle, also the payload of its event.
type Settlement struct {
	HoldID   string `json:"hold_id"`
	Client   string `json:"client"`
	Provider string `json:"provider"`
	Units    int64  `json:"units"`
	Price    int64  `json:"price"`
	Charged  int64  `json:"charged"`
	Refunded int64  `json:"refunded"`
	TxID     string `json:"tx_id"`
}

// Chaincode event names.
const (
	EventHoldFrozen      = "HoldFrozen"
	EventHoldSettled     = "HoldSettled"
	EventHoldReleased    = "HoldReleased"
	EventBatchAnchored   = "BatchAnchored"
	EventModelRegistered = "ModelRegistered"
)

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

// Freeze moves amount from the caller's (a client's) balance into a hold
// for provider until expiresAt. Repeating an identical Freeze returns the
// existing hold unchanged, so a retried submission never freezes twice.
func (l *Ledger) Freeze(holdID, client, provider string, amount, expiresAt int64) (Hold, error) {
	if err := l.require(RoleClient, "freezing credit"); err != nil {
		return Hold{}, err
	}
	if err := checkRecordID("hold_id", holdID); err != nil {
		return Hold{}, err
	}
	if err := checkAccountID("client", client); err != nil {
		return Hold{}, err
	}
	// The provider must be an account id, the form a provider grant acts for.
	if _, err := accountMSP("provider", provider); err != nil {
		return Hold{}, err
	}
	if client != l.caller.Account {
		return Hold{}, fail(CodeForbidden, "client", "a hold can only be frozen by its client; caller is %q, client is %q", l.caller.Account, client)
	}
	if provider == client {
		return Hold{}, fail(CodeInvalidArgument, "provider", "must differ from the client %q", client)
	}
	if err := checkPositive("amount", amount); err != nil {
		return Hold{}, err
	}
	if expiresAt <= l.now.Unix() {
		return Hold{}, fail(CodeInvalidArgument, "expires_at", "must be in the future (unix seconds > %d), got %d", l.now.Unix(), expiresAt)
	}
	var existing Hold
	found, err := l.load(HoldKey(holdID), &existing)
	if err != nil {
		return Hold{}, err
	}
	if found {
		if existing.Client == client && existing.Provider == provider && existing.Amount == amount && existing.ExpiresAt == expiresAt {
			return existing, nil
		}
		return Hold{}, fail(CodeConflict, "hold_id", "hold %q already exists with different terms", holdID)
	}
	if _, err := l.debit("amount", client, amount); err != nil {
		return Hold{}, err
	}
	h := Hold{
		ID: holdID, Client: client, Provider: provider, Amount: amount,
		Status: HoldOpen, ExpiresAt: expiresAt, CreatedAt: l.timestamp(), FreezeTxID: l.txID,
	}
	if err := l.store(HoldKey(holdID), h); err != nil {
		return Hold{}, err
	}
	for _, owner := range []string{client, provider} {
		if err := l.state.IndexAdd(holdsByAccount, owner, holdID); err != nil {
			return Hold{}, &StateError{Op: "index", Key: holdsByAccount + "/" + owner, Err: err}
		}
	}
	return h, l.emit(EventHoldFrozen, h)
}

// Authorize reserves amount of a live hold for service; a provider acting
// for the hold's provider calls it before serving, and it fails once the hold
// cannot cover it.
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

// Settle pays the provider units*price from the hold and returns the rest to
// the client. A hold settles once; settling after expiry is allowed so usage
// served before the deadline is still paid.
func (l *Ledger) Settle(holdID string, units, price int64) (Settlement, error) {
	h, err := l.providersHold(holdID, "settling a hold")
	if err != nil {
		return Settlement{}, err
	}
	// Zero units is a valid settlement (nothing was used: all is refunded).
	if err := checkNonNegative("units", units); err != nil {
		return Settlement{}, err
	}
	if err := checkPositive("price", price); err != nil {
		return Settlement{}, err
	}
	if err := l.requireOpen(h); err != nil {
		return Settlement{}, err
	}
	charge, err := mulChecked("units", units, price)
	if err != nil {
		return Settlement{}, err
	}
	if charge > h.Amount {
		return Settlement{}, fail(CodeExceedsHold, "units", "%d units at %d is %d, more than the %d frozen in hold %q", units, price, charge, h.Amount, holdID)
	}
	if charge > 0 {
		if _, err := l.credit("units", h.Provider, charge); err != nil {
			return Settlement{}, err
		}
	}
	refund := h.Amount - charge
	if refund > 0 {
		if _, err := l.credit("amount", h.Client, refund); err != nil {
			return Settlement{}, err
		}
	}
	h.Status, h.Charged, h.Refunded = HoldSettled, charge, refund
	h.ClosedAt, h.CloseTxID = l.timestamp(), l.txID
	if err := l.store(HoldKey(holdID), h); err != nil {
		return Settlement{}, err
	}
	s := Settlement{HoldID: holdID, Client: h.Client, Provider: h.Provider, Units: units, Price: price, Charged: charge, Refunded: refund, TxID: l.txID}
	return s, l.emit(EventHoldSettled, s)
}

// Release returns a whole hold to the client. The client releases only
// after expiry, so it cannot pull credit out from under a service in
// progress; a provider acting for the hold's provider may release at any
// time (it gives up nothing it could not refund by settling zero units).
func (l *Ledger) Release(holdID string) (Hold, error) {
	h, err := l.hold(holdID)
	if err != nil {
		return Hold{}, err
	}
	switch {
	case l.caller.providerFor(h.Provider):
	case l.caller.Account == h.Client:
		if err := l.require(RoleClient, "releasing a hold"); err != nil {
			return Hold{}, err
		}
		if !h.expired(l.now.Unix()) {
			return Hold{}, fail(CodeHoldNotExpired, "hold_id", "the client may release hold %q only after it expires at %d", holdID, h.ExpiresAt)
		}
	default:
		return Hold{}, fail(CodeForbidden, "hold_id", "only the client of hold %q or a %s acting for %q may release it; caller is %q", holdID, RoleProvider, h.Provider, l.caller.Account)
	}
	if err := l.requireOpen(h); err != nil {
		return Hold{}, err
	}
	if _, err := l.credit("amount", h.Client, h.Amount); err != nil {
		return Hold{}, err
	}
	h.Status, h.Refunded = HoldReleased, h.Amount
	h.ClosedAt, h.CloseTxID = l.timestamp(), l.txID
	if err := l.store(HoldKey(holdID), h); err != nil {
		return Hold{}, err
	}
	return h, l.emit(EventHoldReleased, h)
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
