package ledger

// Settlement is the outcome of Settle, also the payload of its event.
type Settlement struct {
	HoldID       string   `json:"hold_id"`
	Client       string   `json:"client"`
	Provider     string   `json:"provider"`
	Units        int64    `json:"units"` // of the receipt paid for; 0 without one
	PricePerUnit int64    `json:"price_per_unit"`
	Authorized   int64    `json:"authorized"`
	Charged      int64    `json:"charged"` // min(units * price_per_unit, authorized)
	Refunded     int64    `json:"refunded"`
	Receipt      *Receipt `json:"receipt"` // the receipt paid for; null when there was none
	TxID         string   `json:"tx_id"`
}

// Settle closes a hold on the client's latest receipt: a provider acting for
// the hold's provider presents it (units, sequence, signature) before
// settle_by. The provider is paid units * price_per_unit, never more than it
// reserved with Authorize; the client gets the rest back. A hold settles
// once. Sequence 0 (with units 0 and no signature) presents no receipt and
// settles on the receipt recorded by RecordReceipt, if any, else refunds all.
func (l *Ledger) Settle(holdID string, units, sequence int64, signature string) (Settlement, error) {
	h, err := l.providersHold(holdID, "settling a hold")
	if err != nil {
		return Settlement{}, err
	}
	if err := l.requireOpen(h); err != nil {
		return Settlement{}, err
	}
	if err := l.requireSettleWindow(h); err != nil {
		return Settlement{}, err
	}
	if sequence == 0 {
		if units != 0 || signature != "" {
			return Settlement{}, fail(CodeInvalidArgument, "sequence", "sequence 0 presents no receipt: units must be 0 and the signature empty (got units %d)", units)
		}
	} else {
		r, _, err := l.checkReceipt(h, units, sequence, signature)
		if err != nil {
			return Settlement{}, err
		}
		h.Receipt = &r
	}
	if h, err = l.close(h, HoldSettled); err != nil {
		return Settlement{}, err
	}
	s := Settlement{
		HoldID: holdID, Client: h.Client, Provider: h.Provider, PricePerUnit: h.PricePerUnit,
		Authorized: h.Authorized, Charged: h.Charged, Refunded: h.Refunded, Receipt: h.Receipt, TxID: l.txID,
	}
	if h.Receipt != nil {
		s.Units = h.Receipt.Units
	}
	return s, l.emit(EventHoldSettled, s)
}

// Release closes a hold without a new receipt: the provider is paid what the
// receipt recorded on the ledger covers (nothing if none), the client gets the
// rest. The client may release from settle_by on, so the provider always had
// the whole settlement window, and a served client cannot take back what it
// signed for; a provider acting for the hold's provider may release at any
// time.
func (l *Ledger) Release(holdID string) (Hold, error) {
	h, err := l.hold(holdID)
	if err != nil {
		return Hold{}, err
	}
	byClient := false
	switch {
	case l.caller.providerFor(h.Provider):
	case l.caller.Account == h.Client:
		if err := l.require(RoleClient, "releasing a hold"); err != nil {
			return Hold{}, err
		}
		byClient = true
	default:
		return Hold{}, fail(CodeForbidden, "hold_id", "only the client of hold %q or a %s acting for %q may release it; caller is %q", holdID, RoleProvider, h.Provider, l.caller.Account)
	}
	if err := l.requireOpen(h); err != nil {
		return Hold{}, err
	}
	if byClient && l.now.Unix() < h.SettleBy {
		return Hold{}, fail(CodeWindowOpen, "hold_id", "the client may release hold %q from %d on (expiry %d + settlement window %d s)", holdID, h.SettleBy, h.ExpiresAt, h.SettlementWindow)
	}
	if h, err = l.close(h, HoldReleased); err != nil {
		return Hold{}, err
	}
	return h, l.emit(EventHoldReleased, h)
}

// close pays the provider what h's receipt covers, within what was reserved,
// returns the rest to the client, and stores h as closed with status.
func (l *Ledger) close(h Hold, status string) (Hold, error) {
	var units int64
	if h.Receipt != nil {
		units = h.Receipt.Units
	}
	// checkReceipt keeps units <= amount / price, so the product cannot overflow.
	charge := min(units*h.PricePerUnit, h.Authorized)
	refund := h.Amount - charge
	if charge > 0 {
		if _, err := l.credit("units", h.Provider, charge); err != nil {
			return Hold{}, err
		}
	}
	if refund > 0 {
		if _, err := l.credit("amount", h.Client, refund); err != nil {
			return Hold{}, err
		}
	}
	h.Status, h.Charged, h.Refunded = status, charge, refund
	h.ClosedAt, h.CloseTxID = l.timestamp(), l.txID
	return h, l.store(HoldKey(h.ID), h)
}
