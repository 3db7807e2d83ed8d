package ledger

import (
	"encoding/json"
	"math"
	"testing"
	"time"
)

// fundedHarness mints 1000 to alice and freezes 400 of it for bob in hold h1.
func fundedHarness(t *testing.T) *harness {
	h := newHarness(t)
	h.must(admin, func(l *Ledger) error { _, err := l.Mint(acct(alice), 1000); return err })
	h.must(alice, func(l *Ledger) error {
		_, err := l.Freeze("h1", acct(alice), acct(bob), 400, h.now.Unix()+3600)
		return err
	})
	return h
}

// total is the credit conservation invariant: balances plus open holds.
func (h *harness) total(holdIDs ...string) int64 {
	var sum int64
	for _, f := range []IdentityFacts{alice, bob, carol} {
		if raw := h.state.values[AccountKey(acct(f))]; raw != nil {
			var a Account
			_ = json.Unmarshal(raw, &a)
			sum += a.Balance
		}
	}
	for _, id := range holdIDs {
		var hold Hold
		_ = json.Unmarshal(h.state.values[HoldKey(id)], &hold)
		if hold.Status == HoldOpen {
			sum += hold.Amount
		}
	}
	return sum
}

func TestFreezeAuthorizeSettle(t *testing.T) {
	h := fundedHarness(t)
	if got := h.balance(alice); got != 600 {
		t.Fatalf("alice after freeze %d, want 600", got)
	}
	if ev := h.lastEvent(); ev.Name != EventHoldFrozen {
		t.Errorf("freeze emitted %q", ev.Name)
	}
	h.must(bob, func(l *Ledger) error { _, err := l.Authorize("h1", 250); return err })
	err := h.as(bob, func(l *Ledger) error { _, err := l.Authorize("h1", 151); return err })
	wantErr(t, err, ErrExceedsHold, "amount")
	h.must(bob, func(l *Ledger) error {
		s, err := l.Settle("h1", 25, 10)
		if err == nil && (s.Charged != 250 || s.Refunded != 150) {
			t.Errorf("settlement %+v", s)
		}
		return err
	})
	ev := h.lastEvent()
	var s Settlement
	if err := json.Unmarshal(ev.Payload, &s); err != nil || ev.Name != EventHoldSettled || s.Charged != 250 {
		t.Errorf("settle event %q %s", ev.Name, ev.Payload)
	}
	if a, b := h.balance(alice), h.balance(bob); a != 750 || b != 250 {
		t.Errorf("after settle alice %d bob %d, want 750 and 250", a, b)
	}
	if got := h.total("h1"); got != 1000 {
		t.Errorf("credit not conserved: %d", got)
	}
	err = h.as(bob, func(l *Ledger) error { _, err := l.Settle("h1", 1, 1); return err })
	wantErr(t, err, ErrAlreadySettled, "hold_id")
	err = h.as(bob, func(l *Ledger) error { _, err := l.Release("h1"); return err })
	wantErr(t, err, ErrAlreadySettled, "hold_id")
	err = h.as(bob, func(l *Ledger) error { _, err := l.Authorize("h1", 1); return err })
	wantErr(t, err, ErrAlreadySettled, "hold_id")
}

func TestSettleRules(t *testing.T) {
	h := fundedHarness(t)
	cases := []struct {
		name         string
		who          IdentityFacts
		hold         string
		units, price int64
		sentinel     error
		field        string
	}{
		{"more than frozen", bob, "h1", 401, 1, ErrExceedsHold, "units"},
		{"overflowing charge", bob, "h1", math.MaxInt64, 2, ErrInvalidArgument, "units"},
		{"negative units", bob, "h1", -1, 1, ErrInvalidArgument, "units"},
		{"zero price", bob, "h1", 1, 0, ErrInvalidArgument, "price"},
		{"negative price", bob, "h1", 1, -3, ErrInvalidArgument, "price"},
		{"unknown hold", bob, "nope", 1, 1, ErrNotFound, "hold_id"},
		{"malformed hold id", bob, "../x", 1, 1, ErrInvalidArgument, "hold_id"},
		{"client cannot settle", alice, "h1", 1, 1, ErrForbidden, "creator"},
		{"stranger cannot settle", carol, "h1", 1, 1, ErrForbidden, "creator"},
		{"admin without the grant", admin, "h1", 1, 1, ErrForbidden, "creator"},
	}
	for _, c := range cases {
		err := h.as(c.who, func(l *Ledger) error { _, err := l.Settle(c.hold, c.units, c.price); return err })
		t.Run(c.name, func(t *testing.T) { wantErr(t, err, c.sentinel, c.field) })
	}
	// Zero usage settles with a full refund.
	h.must(bob, func(l *Ledger) error { _, err := l.Settle("h1", 0, 5); return err })
	if got := h.balance(alice); got != 1000 {
		t.Errorf("alice after zero settlement %d, want 1000", got)
	}
}

func TestFreezeRules(t *testing.T) {
	h := fundedHarness(t)
	future := h.now.Unix() + 60
	cases := []struct {
		name     string
		who      IdentityFacts
		hold     string
		client   string
		provider string
		amount   int64
		expires  int64
		sentinel error
		field    string
	}{
		{"overdraft", alice, "h2", acct(alice), acct(bob), 601, future, ErrInsufficientFunds, "amount"},
		{"zero", alice, "h2", acct(alice), acct(bob), 0, future, ErrInvalidArgument, "amount"},
		{"negative", alice, "h2", acct(alice), acct(bob), -5, future, ErrInvalidArgument, "amount"},
		{"past expiry", alice, "h2", acct(alice), acct(bob), 5, h.now.Unix(), ErrInvalidArgument, "expires_at"},
		{"someone else's credit", carol, "h2", acct(alice), acct(bob), 5, future, ErrForbidden, "client"},
		{"provider without the client role", bob, "h2", acct(bob), acct(alice), 5, future, ErrForbidden, "creator"},
		{"provider not an account id", alice, "h2", acct(alice), "shop", 5, future, ErrInvalidArgument, "provider"},
		{"provider is client", alice, "h2", acct(alice), acct(alice), 5, future, ErrInvalidArgument, "provider"},
		{"bad hold id", alice, "", acct(alice), acct(bob), 5, future, ErrInvalidArgument, "hold_id"},
		{"reused id, other terms", alice, "h1", acct(alice), acct(bob), 5, future, ErrConflict, "hold_id"},
	}
	for _, c := range cases {
		err := h.as(c.who, func(l *Ledger) error {
			_, err := l.Freeze(c.hold, c.client, c.provider, c.amount, c.expires)
			return err
		})
		t.Run(c.name, func(t *testing.T) { wantErr(t, err, c.sentinel, c.field) })
	}
	// Replaying the identical Freeze does not freeze twice.
	events := len(h.state.events)
	h.must(alice, func(l *Ledger) error {
		_, err := l.Freeze("h1", acct(alice), acct(bob), 400, h.now.Unix()+3600)
		return err
	})
	if got := h.balance(alice); got != 600 || len(h.state.events) != events {
		t.Errorf("replayed freeze changed state: alice %d, events %d->%d", got, events, len(h.state.events))
	}
}

func TestExpiryAndRelease(t *testing.T) {
	h := fundedHarness(t)
	err := h.as(alice, func(l *Ledger) error { _, err := l.Release("h1"); return err })
	wantErr(t, err, ErrHoldNotExpired, "hold_id")
	err = h.as(carol, func(l *Ledger) error { _, err := l.Release("h1"); return err })
	wantErr(t, err, ErrForbidden, "hold_id")
	err = h.as(admin, func(l *Ledger) error { _, err := l.Release("h1"); return err })
	wantErr(t, err, ErrForbidden, "hold_id")

	h.now = h.now.Add(2 * time.Hour)
	err = h.as(bob, func(l *Ledger) error { _, err := l.Authorize("h1", 1); return err })
	wantErr(t, err, ErrHoldExpired, "hold_id")
	h.must(alice, func(l *Ledger) error { _, err := l.Release("h1"); return err })
	if ev := h.lastEvent(); ev.Name != EventHoldReleased {
		t.Errorf("release emitted %q", ev.Name)
	}
	if got := h.balance(alice); got != 1000 {
		t.Errorf("alice after release %d, want 1000", got)
	}
	err = h.as(bob, func(l *Ledger) error { _, err := l.Settle("h1", 1, 1); return err })
	wantErr(t, err, ErrHoldClosed, "hold_id")
	err = h.as(alice, func(l *Ledger) error { _, err := l.Release("h1"); return err })
	wantErr(t, err, ErrHoldClosed, "hold_id")
}

func TestSettleAfterExpiryPaysProvider(t *testing.T) {
	h := fundedHarness(t)
	h.now = h.now.Add(2 * time.Hour)
	h.must(bob, func(l *Ledger) error { _, err := l.Settle("h1", 400, 1); return err })
	if a, b := h.balance(alice), h.balance(bob); a != 600 || b != 400 {
		t.Errorf("alice %d bob %d, want 600 and 400", a, b)
	}
}

func TestProviderMayReleaseEarly(t *testing.T) {
	h := fundedHarness(t)
	h.must(bob, func(l *Ledger) error { _, err := l.Release("h1"); return err })
	if got := h.balance(alice); got != 1000 {
		t.Errorf("alice %d, want 1000", got)
	}
}

func TestCreditConservedAcrossManyHolds(t *testing.T) {
	h := newHarness(t)
	h.must(admin, func(l *Ledger) error { _, err := l.Mint(acct(alice), 10_000); return err })
	var ids []string
	for i := range 50 {
		id := "hold-" + itoa(int64(i))
		ids = append(ids, id)
		h.must(alice, func(l *Ledger) error {
			_, err := l.Freeze(id, acct(alice), acct(bob), int64(100+i), h.now.Unix()+10)
			return err
		})
		if i%3 == 0 {
			h.must(bob, func(l *Ledger) error { _, err := l.Settle(id, int64(i), 2); return err })
		} else if i%3 == 1 {
			h.must(bob, func(l *Ledger) error { _, err := l.Release(id); return err })
		}
		if got := h.total(ids...); got != 10_000 {
			t.Fatalf("after hold %d total credit is %d, want 10000", i, got)
		}
	}
}

func TestHoldsOfListsBothSides(t *testing.T) {
	h := fundedHarness(t)
	h.must(alice, func(l *Ledger) error {
		_, err := l.Freeze("h0", acct(alice), acct(carol), 10, h.now.Unix()+60)
		return err
	})
	// A rejected freeze must not leave an index entry behind.
	_ = h.as(alice, func(l *Ledger) error {
		_, err := l.Freeze("h9", acct(alice), acct(bob), 1_000_000, h.now.Unix()+60)
		return err
	})
	ids := func(f IdentityFacts) []string {
		var out []string
		h.must(auditor, func(l *Ledger) error {
			holds, err := l.HoldsOf(acct(f))
			for _, hold := range holds {
				out = append(out, hold.ID)
			}
			return err
		})
		return out
	}
	if got := ids(alice); len(got) != 2 || got[0] != "h0" || got[1] != "h1" {
		t.Errorf("alice's holds %v, want [h0 h1]", got)
	}
	if got := ids(bob); len(got) != 1 || got[0] != "h1" {
		t.Errorf("bob's holds %v, want [h1]", got)
	}
	err := h.as(carol, func(l *Ledger) error { _, err := l.HoldsOf("x\U0010FFFF"); return err })
	wantErr(t, err, ErrInvalidArgument, "account")
}
