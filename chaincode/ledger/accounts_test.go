package ledger

import (
	"errors"
	"math"
	"strings"
	"testing"
)

func wantErr(t *testing.T, err error, sentinel error, field string) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("want %v, got %v", sentinel, err)
	}
	var e *Error
	if !errors.As(err, &e) || e.Field != field {
		t.Fatalf("want the error to name field %q, got %v", field, err)
	}
}

func TestMintTransferBalance(t *testing.T) {
	h := newHarness(t)
	h.must(admin, func(l *Ledger) error { _, err := l.Mint(acct(alice), 1000); return err })
	h.must(alice, func(l *Ledger) error {
		r, err := l.Transfer(acct(bob), 300)
		if err == nil && (r.From.Balance != 700 || r.To.Balance != 300) {
			t.Errorf("transfer result %+v", r)
		}
		return err
	})
	if got := h.balance(alice); got != 700 {
		t.Errorf("alice balance %d, want 700", got)
	}
	if got := h.balance(bob); got != 300 {
		t.Errorf("bob balance %d, want 300", got)
	}
}

func TestMintIsAdminOnly(t *testing.T) {
	h := newHarness(t)
	for _, who := range []IdentityFacts{alice, operator, org2Admin} {
		err := h.as(who, func(l *Ledger) error { _, err := l.Mint(acct(who), 10); return err })
		wantErr(t, err, ErrForbidden, "caller")
	}
	// An admin asserted through the role attribute also counts.
	viaAttr := IdentityFacts{MSPID: "Org1MSP", Subject: "CN=ops", OUs: []string{"client"}, Role: RoleAdmin}
	h.must(viaAttr, func(l *Ledger) error { _, err := l.Mint(acct(bob), 5); return err })
	if got := h.balance(bob); got != 5 {
		t.Errorf("bob balance %d, want 5", got)
	}
}

func TestAmountsMustBePositive(t *testing.T) {
	h := newHarness(t)
	h.must(admin, func(l *Ledger) error { _, err := l.Mint(acct(alice), 100); return err })
	for _, amount := range []int64{0, -1, math.MinInt64} {
		err := h.as(admin, func(l *Ledger) error { _, err := l.Mint(acct(alice), amount); return err })
		wantErr(t, err, ErrInvalidArgument, "amount")
		err = h.as(alice, func(l *Ledger) error { _, err := l.Transfer(acct(bob), amount); return err })
		wantErr(t, err, ErrInvalidArgument, "amount")
	}
	if got := h.balance(alice); got != 100 {
		t.Errorf("rejected calls changed alice's balance to %d", got)
	}
}

func TestOverdraftRejectedAndNothingWritten(t *testing.T) {
	h := newHarness(t)
	h.must(admin, func(l *Ledger) error { _, err := l.Mint(acct(alice), 50); return err })
	err := h.as(alice, func(l *Ledger) error { _, err := l.Transfer(acct(bob), 51); return err })
	wantErr(t, err, ErrInsufficientFunds, "amount")
	if !strings.Contains(err.Error(), "has 50, needs 51") {
		t.Errorf("message should state the balance and the need: %v", err)
	}
	err = h.as(alice, func(l *Ledger) error { _, err := l.Balance(acct(bob)); return err })
	wantErr(t, err, ErrNotFound, "account")
	// A caller with no account at all cannot spend either.
	err = h.as(carol, func(l *Ledger) error { _, err := l.Transfer(acct(alice), 1); return err })
	wantErr(t, err, ErrInsufficientFunds, "amount")
}

func TestMintOverflowRejected(t *testing.T) {
	h := newHarness(t)
	h.must(admin, func(l *Ledger) error { _, err := l.Mint(acct(alice), math.MaxInt64); return err })
	err := h.as(admin, func(l *Ledger) error { _, err := l.Mint(acct(alice), 1); return err })
	wantErr(t, err, ErrInvalidArgument, "amount")
}

func TestTransferToSelfAndBadAccountIDs(t *testing.T) {
	h := newHarness(t)
	h.must(admin, func(l *Ledger) error { _, err := l.Mint(acct(alice), 10); return err })
	err := h.as(alice, func(l *Ledger) error { _, err := l.Transfer(acct(alice), 1); return err })
	wantErr(t, err, ErrInvalidArgument, "to")
	for _, bad := range []string{"", "a\nb", strings.Repeat("x", maxAccountIDLen+1), "\xff"} {
		err := h.as(alice, func(l *Ledger) error { _, err := l.Transfer(bad, 1); return err })
		wantErr(t, err, ErrInvalidArgument, "to")
	}
}

func TestClassify(t *testing.T) {
	c, err := DefaultRolePolicy.Classify(admin)
	if err != nil || !c.IsAdmin || !c.IsOperator || c.Account != "Org1MSP::"+admin.Subject {
		t.Fatalf("admin classified as %+v, %v", c, err)
	}
	c, _ = DefaultRolePolicy.Classify(operator)
	if c.IsAdmin || !c.IsOperator {
		t.Errorf("operator classified as %+v", c)
	}
	c, _ = DefaultRolePolicy.Classify(org2Admin)
	if c.IsAdmin || c.IsOperator {
		t.Errorf("another org's admin must not be privileged: %+v", c)
	}
	_, err = DefaultRolePolicy.Classify(IdentityFacts{MSPID: "Org1MSP"})
	wantErr(t, err, ErrForbidden, "creator")

	env := map[string]string{"STREAMLEDGER_ADMIN_MSPID": "Org2MSP"}
	p := PolicyFromEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if p.AdminMSPID != "Org2MSP" || p.AdminOU != "admin" || p.RoleAttribute != "streamledger.role" {
		t.Fatalf("policy from env: %+v", p)
	}
	if c, _ := p.Classify(org2Admin); !c.IsAdmin {
		t.Errorf("with STREAMLEDGER_ADMIN_MSPID=Org2MSP the Org2 admin is admin: %+v", c)
	}
}

func TestRejectedTransferChangesNeitherSide(t *testing.T) {
	h := newHarness(t)
	h.must(admin, func(l *Ledger) error { _, err := l.Mint(acct(alice), 10); return err })
	h.must(admin, func(l *Ledger) error { _, err := l.Mint(acct(bob), math.MaxInt64); return err })
	// The debit succeeds inside the rule, the credit overflows: the whole
	// transaction is rejected, so alice keeps her 10.
	err := h.as(alice, func(l *Ledger) error { _, err := l.Transfer(acct(bob), 5); return err })
	wantErr(t, err, ErrInvalidArgument, "amount")
	if got := h.balance(alice); got != 10 {
		t.Errorf("alice %d after a rejected transfer, want 10", got)
	}
}
