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

func TestMintIsForAdminsOfTheMintOrgOnly(t *testing.T) {
	h := newHarness(t)
	// Org2's admin is an admin, but of the client organisation: it may not create credit.
	org2ViaAttr := IdentityFacts{MSPID: "Org2MSP", Subject: "CN=ops2", OUs: []string{"client"}, Role: RoleAdmin}
	for _, who := range []IdentityFacts{alice, operator, bob, auditor, stranger, org2Admin, org2ViaAttr} {
		err := h.as(who, func(l *Ledger) error { _, err := l.Mint(acct(who), 10); return err })
		wantErr(t, err, ErrForbidden, "creator")
		if !strings.Contains(err.Error(), "only an admin of Org1MSP may mint") {
			t.Errorf("the refusal should name the mint organisation: %v", err)
		}
	}
	// An admin asserted through the role attribute also counts.
	viaAttr := IdentityFacts{MSPID: "Org1MSP", Subject: "CN=ops", OUs: []string{"client"}, Role: RoleAdmin}
	h.must(viaAttr, func(l *Ledger) error { _, err := l.Mint(acct(bob), 5); return err })
	if got := h.balance(bob); got != 5 {
		t.Errorf("bob balance %d, want 5", got)
	}
	// With Org2 as the mint organisation, the roles swap.
	h.settings.MintMSPID = "Org2MSP"
	h.must(org2Admin, func(l *Ledger) error { _, err := l.Mint(acct(carol), 5); return err })
	err := h.as(admin, func(l *Ledger) error { _, err := l.Mint(acct(bob), 5); return err })
	wantErr(t, err, ErrForbidden, "creator")
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
	err = h.as(auditor, func(l *Ledger) error { _, err := l.Balance(acct(bob)); return err })
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
	if err != nil || !c.IsAdmin || c.Account != "Org1MSP::"+admin.Subject || c.Roles == nil || len(c.Roles) != 0 {
		t.Fatalf("admin classified as %+v, %v", c, err)
	}
	// An admin of any organisation is an admin (of that organisation).
	if c, _ := DefaultRolePolicy.Classify(org2Admin); !c.IsAdmin || c.MSPID != "Org2MSP" {
		t.Errorf("org2 admin classified as %+v", c)
	}
	// Certificates say nothing of the other roles: an attribute "operator" is no grant.
	claims := IdentityFacts{MSPID: "Org1MSP", Subject: "CN=claims", OUs: []string{"client"}, Role: RoleOperator}
	if c, _ := DefaultRolePolicy.Classify(claims); c.IsAdmin || len(c.Roles) != 0 {
		t.Errorf("a role attribute other than admin must grant nothing: %+v", c)
	}
	_, err = DefaultRolePolicy.Classify(IdentityFacts{MSPID: "Org1MSP"})
	wantErr(t, err, ErrForbidden, "creator")
	_, err = DefaultRolePolicy.Classify(IdentityFacts{Subject: "CN=x"})
	wantErr(t, err, ErrForbidden, "creator")
}

func TestPolicyFromEnv(t *testing.T) {
	policy := func(env map[string]string) RolePolicy {
		return PolicyFromEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	}
	if p := policy(nil); p != DefaultRolePolicy {
		t.Errorf("no variables: %+v, want the default", p)
	}
	p := policy(map[string]string{"STREAMLEDGER_MINT_MSPID": "Org2MSP", "STREAMLEDGER_ADMIN_OU": "boss", "STREAMLEDGER_ROLE_ATTRIBUTE": "x.role"})
	if p != (RolePolicy{MintMSPID: "Org2MSP", AdminOU: "boss", RoleAttribute: "x.role"}) {
		t.Errorf("policy from env: %+v", p)
	}
	// The variable's old name still works, and the new one wins when both are set.
	if p := policy(map[string]string{"STREAMLEDGER_ADMIN_MSPID": "OldMSP"}); p.MintMSPID != "OldMSP" {
		t.Errorf("STREAMLEDGER_ADMIN_MSPID fallback: %+v", p)
	}
	if p := policy(map[string]string{"STREAMLEDGER_ADMIN_MSPID": "OldMSP", "STREAMLEDGER_MINT_MSPID": "NewMSP"}); p.MintMSPID != "NewMSP" {
		t.Errorf("STREAMLEDGER_MINT_MSPID should win: %+v", p)
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
