package ledger

import (
	"encoding/json"
	"math"
	"testing"
	"time"
)

// price is the price per unit of the fixtures' holds.
const price = 10

// freeze has client freeze amount for provider with nonce, at price, expiring in an hour.
func (h *harness) freeze(client IdentityFacts, nonce string, provider IdentityFacts, amount int64) Hold {
	h.t.Helper()
	var hold Hold
	h.must(client, func(l *Ledger) error {
		var err error
		hold, err = l.Freeze(nonce, acct(provider), amount, price, h.now.Unix()+3600, 0)
		return err
	})
	return hold
}

// fundedHarness mints 1000 to alice and freezes 400 of it for bob (40 units at 10).
func fundedHarness(t *testing.T) (*harness, Hold) {
	h := newHarness(t)
	h.must(admin, func(l *Ledger) error { _, err := l.Mint(acct(alice), 1000); return err })
	return h, h.freeze(alice, "n1", bob, 400)
}

func (h *harness) authorize(who IdentityFacts, holdID string, amount int64) error {
	return h.as(who, func(l *Ledger) error { _, err := l.Authorize(holdID, amount); return err })
}

func (h *harness) settle(who IdentityFacts, holdID string, units, sequence int64, sig string) (Settlement, error) {
	var s Settlement
	err := h.as(who, func(l *Ledger) error {
		var err error
		s, err = l.Settle(holdID, units, sequence, sig)
		return err
	})
	return s, err
}

func (h *harness) release(who IdentityFacts, holdID string) (Hold, error) {
	var hold Hold
	err := h.as(who, func(l *Ledger) error {
		var err error
		hold, err = l.Release(holdID)
		return err
	})
	return hold, err
}

func (h *harness) record(who IdentityFacts, holdID string, units, sequence int64, sig string) error {
	return h.as(who, func(l *Ledger) error { _, err := l.RecordReceipt(holdID, units, sequence, sig); return err })
}

// total is the credit conservation invariant: balances plus open holds.
func (h *harness) total(holdIDs ...string) int64 {
	var sum int64
	for _, f := range []IdentityFacts{alice, bob, carol, shop} {
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

func TestHoldIDIsDerivedFromClientAndNonce(t *testing.T) {
	// Pinned: the Python client derives the same id (hashlib.sha256(...).hexdigest()[:32]).
	if got := HoldID("Org2MSP::CN=User1@org2.example.com,OU=client", "0f8e2a7c"); got != "f898c8e3fcf5d04a8186f04a431e5a78" {
		t.Errorf("HoldID test vector: %s", got)
	}
	h, hold := fundedHarness(t)
	if hold.ID != HoldID(acct(alice), "n1") || hold.Nonce != "n1" || hold.Client != acct(alice) {
		t.Fatalf("hold %+v", hold)
	}
	if hold.PricePerUnit != price || hold.SettlementWindow != DefaultMinSettlementWindowSeconds || hold.SettleBy != hold.ExpiresAt+DefaultMinSettlementWindowSeconds {
		t.Errorf("terms %+v", hold)
	}
	if key := keyOf(alice); hold.ClientCert == "" || !certIs(hold.ClientCert, key.cert) {
		t.Errorf("the hold does not record alice's certificate: %q", hold.ClientCert)
	}
	if ev := h.lastEvent(); ev.Name != EventHoldFrozen {
		t.Errorf("freeze emitted %q", ev.Name)
	}
	if got := h.balance(alice); got != 600 {
		t.Fatalf("alice after freeze %d, want 600", got)
	}
}

// Squatting: nobody can take another client's hold id, since the id names its client.
func TestHoldIDsCannotBeSquatted(t *testing.T) {
	h := newHarness(t)
	h.must(admin, func(l *Ledger) error { _, err := l.Mint(acct(alice), 100); return err })
	h.must(admin, func(l *Ledger) error { _, err := l.Mint(acct(carol), 100); return err })
	// Carol front-runs alice's nonce: she gets a hold of her own, alice's freeze still works.
	squat := h.freeze(carol, "alice-order-1", bob, 50)
	mine := h.freeze(alice, "alice-order-1", bob, 50)
	if squat.ID == mine.ID || mine.Client != acct(alice) || squat.Client != acct(carol) {
		t.Fatalf("squatted: %s %s", squat.ID, mine.ID)
	}
	if got := h.balance(alice); got != 50 {
		t.Errorf("alice %d, want 50", got)
	}
}

func TestFreezeRules(t *testing.T) {
	h, _ := fundedHarness(t)
	future := h.now.Unix() + 60
	minW := int64(DefaultMinSettlementWindowSeconds)
	cases := []struct {
		name                 string
		who                  IdentityFacts
		nonce, provider      string
		amount, unit, expiry int64
		window               int64
		sentinel             error
		field                string
	}{
		{"overdraft", alice, "n2", acct(bob), 601, 1, future, 0, ErrInsufficientFunds, "amount"},
		{"zero", alice, "n2", acct(bob), 0, 1, future, 0, ErrInvalidArgument, "amount"},
		{"negative", alice, "n2", acct(bob), -5, 1, future, 0, ErrInvalidArgument, "amount"},
		{"zero price", alice, "n2", acct(bob), 5, 0, future, 0, ErrInvalidArgument, "price_per_unit"},
		{"negative price", alice, "n2", acct(bob), 5, -1, future, 0, ErrInvalidArgument, "price_per_unit"},
		{"price above the amount", alice, "n2", acct(bob), 5, 6, future, 0, ErrInvalidArgument, "price_per_unit"},
		{"past expiry", alice, "n2", acct(bob), 5, 1, h.now.Unix(), 0, ErrInvalidArgument, "expires_at"},
		{"expiry overflowing the window", alice, "n2", acct(bob), 5, 1, math.MaxInt64, 0, ErrInvalidArgument, "expires_at"},
		{"window below the minimum", alice, "n2", acct(bob), 5, 1, future, minW - 1, ErrInvalidArgument, "settlement_window_seconds"},
		{"window above the maximum", alice, "n2", acct(bob), 5, 1, future, MaxSettlementWindowSeconds + 1, ErrInvalidArgument, "settlement_window_seconds"},
		{"negative window", alice, "n2", acct(bob), 5, 1, future, -1, ErrInvalidArgument, "settlement_window_seconds"},
		{"provider without the client role", bob, "n2", acct(alice), 5, 1, future, 0, ErrForbidden, "creator"},
		{"provider not an account id", alice, "n2", "shop", 5, 1, future, 0, ErrInvalidArgument, "provider"},
		{"provider is client", alice, "n2", acct(alice), 5, 1, future, 0, ErrInvalidArgument, "provider"},
		{"bad nonce", alice, "", acct(bob), 5, 1, future, 0, ErrInvalidArgument, "nonce"},
		{"nonce with a newline", alice, "a\nb", acct(bob), 5, 1, future, 0, ErrInvalidArgument, "nonce"},
		{"reused nonce, other amount", alice, "n1", acct(bob), 50, price, h.now.Unix() + 3600, 0, ErrConflict, "nonce"},
		// The price is fixed for the hold's life: not even its client changes it.
		{"reused nonce, other price", alice, "n1", acct(bob), 400, price + 1, h.now.Unix() + 3600, 0, ErrConflict, "nonce"},
		{"reused nonce, other window", alice, "n1", acct(bob), 400, price, h.now.Unix() + 3600, minW + 1, ErrConflict, "nonce"},
	}
	for _, c := range cases {
		err := h.as(c.who, func(l *Ledger) error {
			_, err := l.Freeze(c.nonce, c.provider, c.amount, c.unit, c.expiry, c.window)
			return err
		})
		t.Run(c.name, func(t *testing.T) { wantErr(t, err, c.sentinel, c.field) })
	}
	// Replaying the identical Freeze (window 0 or the minimum it stands for) does not freeze twice.
	events := len(h.state.events)
	for _, window := range []int64{0, minW} {
		h.must(alice, func(l *Ledger) error {
			_, err := l.Freeze("n1", acct(bob), 400, price, h.now.Unix()+3600, window)
			return err
		})
	}
	if got := h.balance(alice); got != 600 || len(h.state.events) != events {
		t.Errorf("replayed freeze changed state: alice %d, events %d->%d", got, events, len(h.state.events))
	}
	// A longer window is the client's choice.
	h.must(alice, func(l *Ledger) error {
		hold, err := l.Freeze("n3", acct(bob), 10, 1, h.now.Unix()+60, 7200)
		if err == nil && (hold.SettlementWindow != 7200 || hold.SettleBy != h.now.Unix()+60+7200) {
			t.Errorf("window: %+v", hold)
		}
		return err
	})
	// A caller without a certificate cannot freeze: receipts could not be checked.
	noCert := alice
	noCert.Certificate = []byte{}
	err := h.as(noCert, func(l *Ledger) error { _, err := l.Freeze("n4", acct(bob), 10, 1, future, 0); return err })
	wantErr(t, err, ErrForbidden, "creator")
}

func TestMinimumWindowIsASetting(t *testing.T) {
	h, _ := fundedHarness(t)
	h.settings.MinSettlementWindowSeconds = 5
	h.must(alice, func(l *Ledger) error {
		hold, err := l.Freeze("short", acct(bob), 10, 1, h.now.Unix()+60, 0)
		if err == nil && hold.SettleBy != h.now.Unix()+65 {
			t.Errorf("hold %+v", hold)
		}
		return err
	})
	h.settings.MinSettlementWindowSeconds = 100
	err := h.as(alice, func(l *Ledger) error { _, err := l.Freeze("short2", acct(bob), 10, 1, h.now.Unix()+60, 99); return err })
	wantErr(t, err, ErrInvalidArgument, "settlement_window_seconds")
}

func TestAuthorizeReservesCumulativelyWithinTheAmount(t *testing.T) {
	h, hold := fundedHarness(t)
	if err := h.authorize(bob, hold.ID, 250); err != nil {
		t.Fatal(err)
	}
	wantErr(t, h.authorize(bob, hold.ID, 151), ErrExceedsHold, "amount")
	wantErr(t, h.authorize(bob, hold.ID, 0), ErrInvalidArgument, "amount")
	h.must(bob, func(l *Ledger) error {
		got, err := l.Authorize(hold.ID, 150)
		if err == nil && got.Authorized != 400 {
			t.Errorf("authorized %d, want 400", got.Authorized)
		}
		return err
	})
	wantErr(t, h.authorize(bob, hold.ID, 1), ErrExceedsHold, "amount")
	wantErr(t, h.authorize(alice, hold.ID, 1), ErrForbidden, "creator")
	wantErr(t, h.authorize(bob, "nope", 1), ErrNotFound, "hold_id")
	wantErr(t, h.authorize(bob, "../x", 1), ErrInvalidArgument, "hold_id")
	h.now = time.Unix(hold.ExpiresAt, 0)
	wantErr(t, h.authorize(bob, hold.ID, 1), ErrHoldExpired, "hold_id")
}

func TestSettleRefusals(t *testing.T) {
	h, hold := fundedHarness(t)
	k := keyOf(alice)
	cases := []struct {
		name       string
		who        IdentityFacts
		hold       string
		units, seq int64
		sig        string
		sentinel   error
		field      string
	}{
		{"more units than the hold pays for", bob, hold.ID, 41, 1, k.sign(hold.ID, 41, 1), ErrExceedsHold, "units"},
		{"overflowing units", bob, hold.ID, math.MaxInt64, 1, k.sign(hold.ID, math.MaxInt64, 1), ErrExceedsHold, "units"},
		{"negative units", bob, hold.ID, -1, 1, k.sign(hold.ID, -1, 1), ErrInvalidArgument, "units"},
		{"negative sequence", bob, hold.ID, 1, -1, k.sign(hold.ID, 1, -1), ErrInvalidArgument, "sequence"},
		{"units without a receipt", bob, hold.ID, 5, 0, "", ErrInvalidArgument, "sequence"},
		{"a signature without a sequence", bob, hold.ID, 0, 0, k.sign(hold.ID, 0, 0), ErrInvalidArgument, "sequence"},
		{"signature not base64", bob, hold.ID, 1, 1, "not base64!", ErrInvalidArgument, "signature"},
		{"empty signature", bob, hold.ID, 1, 1, "", ErrInvalidArgument, "signature"},
		{"unknown hold", bob, "nope", 0, 0, "", ErrNotFound, "hold_id"},
		{"malformed hold id", bob, "../x", 0, 0, "", ErrInvalidArgument, "hold_id"},
		{"client cannot settle", alice, hold.ID, 0, 0, "", ErrForbidden, "creator"},
		{"stranger cannot settle", carol, hold.ID, 0, 0, "", ErrForbidden, "creator"},
		{"admin without the grant", admin, hold.ID, 0, 0, "", ErrForbidden, "creator"},
	}
	for _, c := range cases {
		_, err := h.settle(c.who, c.hold, c.units, c.seq, c.sig)
		t.Run(c.name, func(t *testing.T) { wantErr(t, err, c.sentinel, c.field) })
	}
	// Settling with no receipt at all refunds everything.
	s, err := h.settle(bob, hold.ID, 0, 0, "")
	if err != nil || s.Charged != 0 || s.Refunded != 400 || s.Receipt != nil {
		t.Fatalf("settlement without a receipt %+v %v", s, err)
	}
	if got := h.balance(alice); got != 1000 {
		t.Errorf("alice after a settlement without receipt %d, want 1000", got)
	}
}

func TestClientReleasesOnlyAfterTheSettlementWindow(t *testing.T) {
	h, hold := fundedHarness(t)
	for _, at := range []int64{hold.ExpiresAt - 1, hold.ExpiresAt, hold.ExpiresAt + 1, hold.SettleBy - 1} {
		h.now = time.Unix(at, 0)
		_, err := h.release(alice, hold.ID)
		wantErr(t, err, ErrWindowOpen, "hold_id")
	}
	for _, who := range []IdentityFacts{carol, admin, stranger} {
		_, err := h.release(who, hold.ID)
		wantErr(t, err, ErrForbidden, "hold_id")
	}
	h.now = time.Unix(hold.SettleBy, 0)
	released, err := h.release(alice, hold.ID)
	if err != nil || released.Status != HoldReleased || released.Refunded != 400 || released.Charged != 0 {
		t.Fatalf("release %+v %v", released, err)
	}
	if ev := h.lastEvent(); ev.Name != EventHoldReleased {
		t.Errorf("release emitted %q", ev.Name)
	}
	if got := h.balance(alice); got != 1000 {
		t.Errorf("alice after release %d, want 1000", got)
	}
	_, err = h.settle(bob, hold.ID, 0, 0, "")
	wantErr(t, err, ErrHoldClosed, "hold_id")
	_, err = h.release(alice, hold.ID)
	wantErr(t, err, ErrHoldClosed, "hold_id")
}

func TestProviderMayReleaseEarly(t *testing.T) {
	h, hold := fundedHarness(t)
	if _, err := h.release(bob, hold.ID); err != nil {
		t.Fatal(err)
	}
	if got := h.balance(alice); got != 1000 {
		t.Errorf("alice %d, want 1000", got)
	}
}

func TestHoldsOfListsBothSides(t *testing.T) {
	h, h1 := fundedHarness(t)
	h0 := h.freeze(alice, "n0", carol, 10)
	// A rejected freeze must not leave an index entry behind.
	_ = h.as(alice, func(l *Ledger) error {
		_, err := l.Freeze("n9", acct(bob), 1_000_000, 1, h.now.Unix()+60, 0)
		return err
	})
	ids := func(f IdentityFacts) map[string]bool {
		out := map[string]bool{}
		h.must(auditor, func(l *Ledger) error {
			holds, err := l.HoldsOf(acct(f))
			for _, hold := range holds {
				out[hold.ID] = true
			}
			return err
		})
		return out
	}
	if got := ids(alice); len(got) != 2 || !got[h0.ID] || !got[h1.ID] {
		t.Errorf("alice's holds %v, want %s and %s", got, h0.ID, h1.ID)
	}
	if got := ids(bob); len(got) != 1 || !got[h1.ID] {
		t.Errorf("bob's holds %v, want [%s]", got, h1.ID)
	}
	err := h.as(carol, func(l *Ledger) error { _, err := l.HoldsOf("x\U0010FFFF"); return err })
	wantErr(t, err, ErrInvalidArgument, "account")
}
