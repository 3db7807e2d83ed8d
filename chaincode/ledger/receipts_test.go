package ledger

import (
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/rand/v2"
	"testing"
	"time"
)

// A receipt signed by Python's `cryptography` (ECDSA P-256, SHA-256, DER), in
// its low-S and high-S forms, for the hold of TestHoldIDIsDerivedFromClientAndNonce.
const (
	vectorCert = `-----BEGIN CERTIFICATE-----
MIIBUDCB96ADAgECAgEHMAoGCCqGSM49BAMCMDIxHzAdBgNVBAMMFlVzZXIxQG9y
ZzIuZXhhbXBsZS5jb20xDzANBgNVBAsMBmNsaWVudDAeFw0yNTAxMDEwMDAwMDBa
Fw0zNTAxMDEwMDAwMDBaMDIxHzAdBgNVBAMMFlVzZXIxQG9yZzIuZXhhbXBsZS5j
b20xDzANBgNVBAsMBmNsaWVudDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABEuH
GTZFuCVKlu+6ert/7tI+yu+ylfZ1U/USeXodUpAXo5ki1DFy4J+IVGf1kYSxJF86
eRUzar1/uu32aum6+8QwCgYIKoZIzj0EAwIDSAAwRQIgDIFk3boItxsQIx0CoxrZ
yBe0ToB5RjWs0JYCP2wcFKkCIQDCfZGhQA1ZsbodRBMaw7FY6JGmfbCuF1jCMBRU
uiuZSA==
-----END CERTIFICATE-----
`
	vectorHold  = "f898c8e3fcf5d04a8186f04a431e5a78"
	vectorLowS  = "MEUCIQCCGaPSG54CRwbKJ8bGxdc79YovHcDh4l4gjTRNzww3gQIgOiYxxWDhpEKAilfh8DtB172kKkjhIRIwtOLwchOI9dQ="
	vectorHighS = "MEYCIQCCGaPSG54CRwbKJ8bGxdc79YovHcDh4l4gjTRNzww3gQIhAMXZzjmfHlu+f3WoHg/Evif/QtBkxfaMVD7W2lDo2i99"
)

func TestReceiptMessageAndTestVector(t *testing.T) {
	want := "streamledger-receipt/v1\n" + vectorHold + "\n42\n7"
	if got := string(ReceiptMessage(vectorHold, 42, 7)); got != want {
		t.Fatalf("receipt bytes %q, want %q", got, want)
	}
	// The Python client's signatures verify, low-S and high-S alike.
	hold := Hold{ID: vectorHold, ClientCert: vectorCert, Client: "Org2MSP::CN=User1@org2.example.com,OU=client", Amount: 1000, PricePerUnit: 1}
	l := &Ledger{}
	for _, sig := range []string{vectorLowS, vectorHighS} {
		if _, _, err := l.checkReceipt(hold, 42, 7, sig); err != nil {
			t.Errorf("signature %s: %v", sig, err)
		}
	}
	// Any other number in the message breaks it.
	for _, c := range [][2]int64{{43, 7}, {42, 8}, {41, 7}} {
		_, _, err := l.checkReceipt(hold, c[0], c[1], vectorLowS)
		wantErr(t, err, ErrInvalidReceipt, "signature")
	}
	block, _ := pem.Decode([]byte(vectorCert))
	if _, err := receiptKey(block.Bytes); err != nil {
		t.Errorf("the vector certificate's key: %v", err)
	}
}

// TestHonestClientAndProvider: alice is served 23 units at 10 over two
// replicas that reserve in chunks; the provider settles on her last receipt.
func TestHonestClientAndProvider(t *testing.T) {
	h, hold := fundedHarness(t)
	k := keyOf(alice)
	// Two replicas reserve 100 each (10 units), then one of them a chunk more.
	for _, chunk := range []int64{100, 100, 100} {
		if err := h.authorize(bob, hold.ID, chunk); err != nil {
			t.Fatal(err)
		}
	}
	var sig string
	for seq := int64(1); seq <= 23; seq++ {
		sig = k.sign(hold.ID, seq, seq) // one unit per request, signed with the request
	}
	// A checkpoint mid-way, as a server does before a restart.
	if err := h.record(bob, hold.ID, 12, 12, k.sign(hold.ID, 12, 12)); err != nil {
		t.Fatal(err)
	}
	s, err := h.settle(bob, hold.ID, 23, 23, sig)
	if err != nil {
		t.Fatal(err)
	}
	if s.Units != 23 || s.PricePerUnit != price || s.Charged != 230 || s.Refunded != 170 || s.Authorized != 300 ||
		s.Receipt == nil || s.Receipt.Sequence != 23 || s.Receipt.Signature != sig || s.Receipt.TxID != s.TxID {
		t.Fatalf("settlement %+v", s)
	}
	ev := h.lastEvent()
	var payload Settlement
	if err := json.Unmarshal(ev.Payload, &payload); err != nil || ev.Name != EventHoldSettled || payload.Charged != 230 || payload.Receipt.Units != 23 {
		t.Errorf("settle event %q %s", ev.Name, ev.Payload)
	}
	if a, b := h.balance(alice), h.balance(bob); a != 1000-230 || b != 230 {
		t.Errorf("after settle alice %d bob %d, want 770 and 230", a, b)
	}
	if got := h.total(hold.ID); got != 1000 {
		t.Errorf("credit not conserved: %d", got)
	}
	h.must(alice, func(l *Ledger) error {
		got, err := l.GetHold(hold.ID)
		if err == nil && (got.Status != HoldSettled || got.Receipt.Units != 23 || got.Charged != 230 || got.Refunded != 170) {
			t.Errorf("settled hold %+v", got)
		}
		return err
	})
}

// Every way the issue lists for a provider or a client to bend a hold.
func TestReceiptCheatsAreRefused(t *testing.T) {
	h, hold := fundedHarness(t)
	other := h.freeze(alice, "n2", bob, 100)
	k := keyOf(alice)
	if err := h.authorize(bob, hold.ID, 400); err != nil {
		t.Fatal(err)
	}
	if err := h.record(bob, hold.ID, 10, 5, k.sign(hold.ID, 10, 5)); err != nil {
		t.Fatal(err)
	}
	// A certificate of the same name (say, alice's renewed one) is not the one that froze.
	renewed := newTestKey(alice.Subject)
	cases := []struct {
		name     string
		units    int64
		seq      int64
		sig      string
		sentinel error
		field    string
	}{
		{"settle above the receipt", 30, 6, k.sign(hold.ID, 20, 6), ErrInvalidReceipt, "signature"},
		{"forged signature", 20, 6, base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef")), ErrInvalidReceipt, "signature"},
		{"signed by another client", 20, 6, keyOf(carol).sign(hold.ID, 20, 6), ErrInvalidReceipt, "signature"},
		{"signed by a provider", 20, 6, keyOf(bob).sign(hold.ID, 20, 6), ErrInvalidReceipt, "signature"},
		{"signed by a same-named certificate", 20, 6, renewed.sign(hold.ID, 20, 6), ErrInvalidReceipt, "signature"},
		{"receipt of another hold", 20, 6, k.sign(other.ID, 20, 6), ErrInvalidReceipt, "signature"},
		{"older sequence", 12, 4, k.sign(hold.ID, 12, 4), ErrStaleReceipt, "sequence"},
		{"same sequence, other units", 12, 5, k.sign(hold.ID, 12, 5), ErrStaleReceipt, "sequence"},
		{"fewer units", 9, 6, k.sign(hold.ID, 9, 6), ErrStaleReceipt, "units"},
	}
	for _, c := range cases {
		_, err := h.settle(bob, hold.ID, c.units, c.seq, c.sig)
		t.Run("Settle: "+c.name, func(t *testing.T) { wantErr(t, err, c.sentinel, c.field) })
		err = h.record(bob, hold.ID, c.units, c.seq, c.sig)
		t.Run("RecordReceipt: "+c.name, func(t *testing.T) { wantErr(t, err, c.sentinel, c.field) })
	}
	// Another provider, or the payee account without the role, cannot use a valid receipt.
	good := k.sign(hold.ID, 20, 6)
	h.grant(settlement, RoleProvider, acct(shop))
	_, err := h.settle(settlement, hold.ID, 20, 6, good)
	wantErr(t, err, ErrForbidden, "hold_id")
	err = h.record(settlement, hold.ID, 20, 6, good)
	wantErr(t, err, ErrForbidden, "hold_id")
	_, err = h.settle(alice, hold.ID, 20, 6, good)
	wantErr(t, err, ErrForbidden, "creator")

	// Nothing above changed the hold: still the checkpoint of sequence 5.
	h.must(bob, func(l *Ledger) error {
		got, err := l.GetHold(hold.ID)
		if err == nil && (got.Status != HoldOpen || got.Receipt.Sequence != 5 || got.Receipt.Units != 10) {
			t.Errorf("hold after refused cheats %+v", got)
		}
		return err
	})

	// The valid receipt settles once; replaying it (or any other) is refused.
	s, err := h.settle(bob, hold.ID, 20, 6, good)
	if err != nil || s.Charged != 200 {
		t.Fatalf("settle %+v %v", s, err)
	}
	_, err = h.settle(bob, hold.ID, 20, 6, good)
	wantErr(t, err, ErrAlreadySettled, "hold_id")
	_, err = h.settle(bob, hold.ID, 40, 7, k.sign(hold.ID, 40, 7))
	wantErr(t, err, ErrAlreadySettled, "hold_id")
	err = h.record(bob, hold.ID, 40, 7, k.sign(hold.ID, 40, 7))
	wantErr(t, err, ErrAlreadySettled, "hold_id")
	_, err = h.release(bob, hold.ID)
	wantErr(t, err, ErrAlreadySettled, "hold_id")
	wantErr(t, h.authorize(bob, hold.ID, 1), ErrAlreadySettled, "hold_id")
	if a, b := h.balance(alice), h.balance(bob); a != 1000-100-200 || b != 200 {
		t.Errorf("alice %d bob %d, want 700 (100 still held) and 200", a, b)
	}
}

func TestRecordReceiptKeepsTheLatest(t *testing.T) {
	h, hold := fundedHarness(t)
	k := keyOf(alice)
	if err := h.record(bob, hold.ID, 3, 1, k.sign(hold.ID, 3, 1)); err != nil {
		t.Fatal(err)
	}
	ev := h.lastEvent()
	var r Receipt
	if err := json.Unmarshal(ev.Payload, &r); err != nil || ev.Name != EventReceiptRecorded || r.Units != 3 || r.HoldID != hold.ID || r.TxID == "" {
		t.Fatalf("record event %q %s", ev.Name, ev.Payload)
	}
	// The same receipt again is a no-op: no write, no event, the first tx kept.
	events := len(h.state.events)
	h.must(bob, func(l *Ledger) error {
		got, err := l.RecordReceipt(hold.ID, 3, 1, k.sign(hold.ID, 3, 1))
		if err == nil && (got.Receipt == nil || got.Receipt.TxID != r.TxID) {
			t.Errorf("replayed receipt %+v", got.Receipt)
		}
		return err
	})
	if len(h.state.events) != events {
		t.Error("a replayed receipt emitted an event")
	}
	// Equal units, higher sequence: a receipt may repeat the units.
	if err := h.record(bob, hold.ID, 3, 2, k.sign(hold.ID, 3, 2)); err != nil {
		t.Fatal(err)
	}
	// Only providers of the hold record, and never for a client.
	err := h.record(alice, hold.ID, 4, 3, k.sign(hold.ID, 4, 3))
	wantErr(t, err, ErrForbidden, "creator")
	// Settle with no receipt settles on the recorded one (authorized caps it).
	if err := h.authorize(bob, hold.ID, 20); err != nil {
		t.Fatal(err)
	}
	s, err := h.settle(bob, hold.ID, 0, 0, "")
	if err != nil || s.Units != 3 || s.Charged != 20 || s.Refunded != 380 || s.Receipt == nil || s.Receipt.Sequence != 2 {
		t.Fatalf("settle on the recorded receipt %+v %v", s, err)
	}
}

// A provider is never paid more than it reserved before serving.
func TestChargeIsCappedByTheReservation(t *testing.T) {
	h, hold := fundedHarness(t)
	k := keyOf(alice)
	// A receipt for 30 units with only 100 (10 units) reserved: 100 is charged.
	if err := h.authorize(bob, hold.ID, 100); err != nil {
		t.Fatal(err)
	}
	s, err := h.settle(bob, hold.ID, 30, 1, k.sign(hold.ID, 30, 1))
	if err != nil || s.Units != 30 || s.Charged != 100 || s.Refunded != 300 {
		t.Fatalf("settlement %+v %v", s, err)
	}
	// With nothing reserved, a receipt pays nothing.
	h2, hold2 := fundedHarness(t)
	s, err = h2.settle(bob, hold2.ID, 30, 1, keyOf(alice).sign(hold2.ID, 30, 1))
	if err != nil || s.Charged != 0 || s.Refunded != 400 {
		t.Fatalf("settlement without reservation %+v %v", s, err)
	}
}

// The windows: the provider settles before settle_by, the client releases from
// it, and a client's release pays the receipt the provider recorded.
func TestWindowsProtectBothSides(t *testing.T) {
	h, hold := fundedHarness(t)
	k := keyOf(alice)
	if err := h.authorize(bob, hold.ID, 400); err != nil {
		t.Fatal(err)
	}
	if err := h.record(bob, hold.ID, 15, 3, k.sign(hold.ID, 15, 3)); err != nil {
		t.Fatal(err)
	}
	// After expiry, within the window: the provider still records and could settle;
	// the served client cannot take its credit back.
	h.now = time.Unix(hold.ExpiresAt+60, 0)
	if err := h.record(bob, hold.ID, 17, 4, k.sign(hold.ID, 17, 4)); err != nil {
		t.Fatal(err)
	}
	_, err := h.release(alice, hold.ID)
	wantErr(t, err, ErrWindowOpen, "hold_id")
	// From settle_by on, the provider is too late.
	h.now = time.Unix(hold.SettleBy, 0)
	_, err = h.settle(bob, hold.ID, 18, 5, k.sign(hold.ID, 18, 5))
	wantErr(t, err, ErrWindowClosed, "hold_id")
	err = h.record(bob, hold.ID, 18, 5, k.sign(hold.ID, 18, 5))
	wantErr(t, err, ErrWindowClosed, "hold_id")
	_, err = h.settle(bob, hold.ID, 0, 0, "")
	wantErr(t, err, ErrWindowClosed, "hold_id")
	// The client releases, and the provider is paid what the recorded receipt covers.
	released, err := h.release(alice, hold.ID)
	if err != nil || released.Status != HoldReleased || released.Charged != 170 || released.Refunded != 230 || released.Receipt.Sequence != 4 {
		t.Fatalf("release %+v %v", released, err)
	}
	if a, b := h.balance(alice), h.balance(bob); a != 830 || b != 170 {
		t.Errorf("alice %d bob %d, want 830 and 170", a, b)
	}
	// The provider may release at any time, also paying the recorded receipt.
	h2, hold2 := fundedHarness(t)
	if err := h2.authorize(bob, hold2.ID, 50); err != nil {
		t.Fatal(err)
	}
	if err := h2.record(bob, hold2.ID, 5, 1, keyOf(alice).sign(hold2.ID, 5, 1)); err != nil {
		t.Fatal(err)
	}
	released, err = h2.release(bob, hold2.ID)
	if err != nil || released.Charged != 50 || released.Refunded != 350 {
		t.Fatalf("provider release %+v %v", released, err)
	}
}

// Credit is conserved, whatever order the parties act in and whichever
// moves are refused: the sum of balances and open holds never changes.
func TestCreditConservedAcrossFreezeAuthorizeSettleRelease(t *testing.T) {
	h := newHarness(t)
	h.grant(inference, RoleProvider, acct(shop))
	h.must(admin, func(l *Ledger) error { _, err := l.Mint(acct(alice), 10_000); return err })
	h.must(admin, func(l *Ledger) error { _, err := l.Mint(acct(carol), 10_000); return err })
	rng := rand.New(rand.NewPCG(21, 1))
	type open struct {
		hold   Hold
		client IdentityFacts
		payer  IdentityFacts // the provider identity acting for the hold's provider
		units  int64
		seq    int64
	}
	var holds []*open
	var ids []string
	start := h.now
	for step := range 600 {
		h.now = start.Add(time.Duration(step) * 7 * time.Second)
		switch op := rng.IntN(6); {
		case op == 0 || len(holds) == 0:
			client := []IdentityFacts{alice, carol}[rng.IntN(2)]
			provider, payer := bob, bob
			if rng.IntN(2) == 0 {
				provider, payer = shop, inference
			}
			var hold Hold
			err := h.as(client, func(l *Ledger) error {
				var err error
				hold, err = l.Freeze("n"+itoa(int64(step)), acct(provider), 50+rng.Int64N(300), 1+rng.Int64N(5), h.now.Unix()+60+rng.Int64N(600), 0)
				return err
			})
			if err == nil {
				holds = append(holds, &open{hold: hold, client: client, payer: payer})
				ids = append(ids, hold.ID)
			}
		default:
			o := holds[rng.IntN(len(holds))]
			switch op {
			case 1:
				_ = h.authorize(o.payer, o.hold.ID, 1+rng.Int64N(100))
			case 2:
				o.units, o.seq = o.units+rng.Int64N(10), o.seq+1
				_ = h.record(o.payer, o.hold.ID, o.units, o.seq, keyOf(o.client).sign(o.hold.ID, o.units, o.seq))
			case 3:
				_, _ = h.settle(o.payer, o.hold.ID, o.units+rng.Int64N(3), o.seq+1, keyOf(o.client).sign(o.hold.ID, o.units, o.seq+1))
			case 4:
				_, _ = h.release(o.client, o.hold.ID)
			case 5:
				h.now = time.Unix(o.hold.SettleBy, 0) // jump past the window, then release
				_, _ = h.release(o.client, o.hold.ID)
			}
		}
		if got := h.total(ids...); got != 20_000 {
			t.Fatalf("step %d: total credit is %d, want 20000", step, got)
		}
	}
	closed := 0
	for _, id := range ids {
		var hold Hold
		_ = json.Unmarshal(h.state.values[HoldKey(id)], &hold)
		if hold.Status != HoldOpen {
			closed++
			if hold.Charged+hold.Refunded != hold.Amount || hold.Charged > hold.Authorized {
				t.Errorf("hold %s closed as %d + %d of %d (authorized %d)", id, hold.Charged, hold.Refunded, hold.Amount, hold.Authorized)
			}
		}
	}
	if closed < 20 {
		t.Errorf("only %d holds closed: the random walk does not exercise settlement", closed)
	}
}
