package ledger

import (
	"encoding/json"
	"slices"
	"testing"
	"time"
)

// A provider account and the two service identities that act for it.
var (
	shop       = IdentityFacts{MSPID: "Org1MSP", Subject: "CN=shop,OU=client", OUs: []string{"client"}}
	inference  = IdentityFacts{MSPID: "Org1MSP", Subject: "CN=inference,OU=client", OUs: []string{"client"}}
	settlement = IdentityFacts{MSPID: "Org1MSP", Subject: "CN=settlement,OU=client", OUs: []string{"client"}}
)

func (h *harness) roles(account string) RoleRecord {
	h.t.Helper()
	var r RoleRecord
	h.must(auditor, func(l *Ledger) error { var err error; r, err = l.GetRoles(account); return err })
	return r
}

func (h *harness) whoAmI(f IdentityFacts) Caller {
	h.t.Helper()
	var c Caller
	h.must(f, func(l *Ledger) error { c = l.WhoAmI(); return nil })
	return c
}

func TestGrantRoleRecordsAndIsAuditable(t *testing.T) {
	h := newHarness(t)
	svc := IdentityFacts{MSPID: "Org1MSP", Subject: "CN=svc", OUs: []string{"client"}}
	if r := h.roles(acct(svc)); r.Account != acct(svc) || r.MSPID != "Org1MSP" || r.Roles == nil || len(r.Roles) != 0 {
		t.Fatalf("roles of an account never granted anything: %+v", r)
	}
	h.grant(svc, RoleOperator, "")
	ev := h.lastEvent()
	var payload RoleEvent
	if err := json.Unmarshal(ev.Payload, &payload); err != nil || ev.Name != EventRoleGranted || payload.Role != RoleOperator || payload.Account != acct(svc) {
		t.Fatalf("grant event %q %s", ev.Name, ev.Payload)
	}
	h.must(admin, func(l *Ledger) error {
		r, err := l.GrantRole(acct(svc), RoleAuditor, "")
		if err == nil && (r.UpdatedBy != acct(admin) || r.TxID != l.txID) {
			t.Errorf("GrantRole returned %+v, want it signed by this transaction", r)
		}
		return err
	})
	r := h.roles(acct(svc))
	if !slices.Equal(r.Roles, []string{RoleAuditor, RoleOperator}) || r.ActsFor != "" || r.UpdatedBy != acct(admin) || r.TxID == "" {
		t.Fatalf("role record %+v", r)
	}
	if c := h.whoAmI(svc); !slices.Equal(c.Roles, r.Roles) || c.IsAdmin || c.ActsFor != "" {
		t.Errorf("WhoAmI %+v, want the granted roles", c)
	}

	// Granting a held role again changes nothing and emits nothing.
	events := len(h.state.events)
	h.grant(svc, RoleOperator, "")
	if again := h.roles(acct(svc)); again.TxID != r.TxID || len(h.state.events) != events {
		t.Errorf("a repeated grant wrote %+v or emitted %d events", again, len(h.state.events)-events)
	}

	// Both grants are in the key's history, for auditors and admins.
	for _, who := range []IdentityFacts{auditor, admin, org2Admin} {
		h.must(who, func(l *Ledger) error {
			entries, err := l.History(RoleKey(acct(svc)))
			if err == nil && len(entries) != 2 {
				t.Errorf("history of the role record has %d entries, want 2: %+v", len(entries), entries)
			}
			return err
		})
	}
	err := h.as(alice, func(l *Ledger) error { _, err := l.History(RoleKey(acct(svc))); return err })
	wantErr(t, err, ErrForbidden, "creator")
}

func TestGrantAndRevokeRefusals(t *testing.T) {
	h := newHarness(t)
	h.grant(shop, RoleProvider, "")
	cases := []struct {
		name             string
		who              IdentityFacts
		account, role    string
		actsFor          string
		sentinel         error
		field            string
		alsoRevokeRefuse bool
	}{
		{"by a non-admin", alice, acct(bob), RoleOperator, "", ErrForbidden, "creator", true},
		{"by an operator", operator, acct(alice), RoleOperator, "", ErrForbidden, "creator", true},
		{"by the other org's admin", org2Admin, acct(alice), RoleOperator, "", ErrForbidden, "account", true},
		{"to the other org's account", admin, acct(carol), RoleProvider, "", ErrForbidden, "account", true},
		{"the admin role", admin, acct(alice), RoleAdmin, "", ErrInvalidArgument, "role", true},
		{"an unknown role", admin, acct(alice), "root", "", ErrInvalidArgument, "role", true},
		{"an empty role", admin, acct(alice), "", "", ErrInvalidArgument, "role", true},
		{"no MSP in the account", admin, "CN=alice", RoleClient, "", ErrInvalidArgument, "account", true},
		{"empty MSP", admin, "::CN=alice", RoleClient, "", ErrInvalidArgument, "account", true},
		{"empty subject", admin, "Org1MSP::", RoleClient, "", ErrInvalidArgument, "account", true},
		{"control characters", admin, "Org1MSP::a\nb", RoleClient, "", ErrInvalidArgument, "account", true},
		{"acts_for on a client", admin, acct(alice), RoleClient, acct(shop), ErrInvalidArgument, "acts_for", false},
		{"acts_for of another org", admin, acct(inference), RoleProvider, acct(carol), ErrInvalidArgument, "acts_for", false},
		{"acts_for malformed", admin, acct(inference), RoleProvider, "shop", ErrInvalidArgument, "acts_for", false},
		{"provider again for another account", admin, acct(shop), RoleProvider, acct(bob), ErrConflict, "acts_for", false},
	}
	events := len(h.state.events)
	for _, c := range cases {
		err := h.as(c.who, func(l *Ledger) error { _, err := l.GrantRole(c.account, c.role, c.actsFor); return err })
		t.Run("grant "+c.name, func(t *testing.T) { wantErr(t, err, c.sentinel, c.field) })
		if c.alsoRevokeRefuse {
			err = h.as(c.who, func(l *Ledger) error { _, err := l.RevokeRole(c.account, c.role); return err })
			t.Run("revoke "+c.name, func(t *testing.T) { wantErr(t, err, c.sentinel, c.field) })
		}
	}
	if len(h.state.events) != events {
		t.Errorf("refused grants emitted %d events", len(h.state.events)-events)
	}
	if r := h.roles(acct(alice)); !slices.Equal(r.Roles, []string{RoleClient}) {
		t.Errorf("refused grants changed alice's roles: %+v", r)
	}
	// The other org's admin manages its own accounts.
	h.must(org2Admin, func(l *Ledger) error { _, err := l.GrantRole(acct(carol), RoleAuditor, ""); return err })
	if r := h.roles(acct(carol)); !slices.Equal(r.Roles, []string{RoleAuditor, RoleClient}) || r.UpdatedBy != acct(org2Admin) {
		t.Errorf("carol's roles %+v", r)
	}
}

func TestRevokedRoleIsRefusedAfterwards(t *testing.T) {
	h := newHarness(t)
	h.must(operator, func(l *Ledger) error { _, err := l.AnchorBatch("t:0:0-0", root1, 1, 0, 0); return err })
	h.must(admin, func(l *Ledger) error { _, err := l.RevokeRole(acct(operator), RoleOperator); return err })
	ev := h.lastEvent()
	var payload RoleEvent
	if err := json.Unmarshal(ev.Payload, &payload); err != nil || ev.Name != EventRoleRevoked || payload.Role != RoleOperator || len(payload.Roles) != 0 {
		t.Fatalf("revoke event %q %s", ev.Name, ev.Payload)
	}
	err := h.as(operator, func(l *Ledger) error { _, err := l.AnchorBatch("t:0:1-1", root1, 1, 1, 1); return err })
	wantErr(t, err, ErrForbidden, "creator")
	// With no role left, the shared records are closed to it too.
	err = h.as(operator, func(l *Ledger) error { _, err := l.GetAnchor("t:0:0-0"); return err })
	wantErr(t, err, ErrForbidden, "creator")

	// Revoking a role not held is a no-op: same record, no event.
	events, before := len(h.state.events), h.roles(acct(operator))
	h.must(admin, func(l *Ledger) error {
		r, err := l.RevokeRole(acct(operator), RoleOperator)
		if err == nil && (r.TxID != before.TxID || len(r.Roles) != 0 || r.Roles == nil) {
			t.Errorf("a repeated revoke returned %+v", r)
		}
		return err
	})
	if len(h.state.events) != events {
		t.Error("a repeated revoke emitted an event")
	}

	// A revoked client can no longer freeze, transfer or release.
	h.must(admin, func(l *Ledger) error { _, err := l.Mint(acct(alice), 100); return err })
	h1 := h.freeze(alice, "n1", bob, 10)
	h.must(admin, func(l *Ledger) error { _, err := l.RevokeRole(acct(alice), RoleClient); return err })
	h.now = time.Unix(h1.SettleBy, 0)
	err = h.as(alice, func(l *Ledger) error {
		_, err := l.Freeze("n2", acct(bob), 10, 1, h.now.Unix()+60, 0)
		return err
	})
	wantErr(t, err, ErrForbidden, "creator")
	err = h.as(alice, func(l *Ledger) error { _, err := l.Transfer(acct(bob), 1); return err })
	wantErr(t, err, ErrForbidden, "creator")
	_, err = h.release(alice, h1.ID)
	wantErr(t, err, ErrForbidden, "creator")
	// Her own records she still reads: she owns them.
	if got := h.balance(alice); got != 90 {
		t.Errorf("alice %d, want 90", got)
	}
	h.must(alice, func(l *Ledger) error { _, err := l.GetHold(h1.ID); return err })

	// A revoked provider loses what it acted for.
	h.must(admin, func(l *Ledger) error { _, err := l.RevokeRole(acct(bob), RoleProvider); return err })
	if c := h.whoAmI(bob); len(c.Roles) != 0 || c.ActsFor != "" {
		t.Errorf("bob after revocation %+v", c)
	}
	_, err = h.settle(bob, h1.ID, 0, 0, "")
	wantErr(t, err, ErrForbidden, "creator")
}

func TestProviderActsForOneAccountOnly(t *testing.T) {
	h := newHarness(t)
	h.grant(inference, RoleProvider, acct(shop))
	h.grant(settlement, RoleProvider, acct(shop))
	if c := h.whoAmI(inference); !slices.Equal(c.Roles, []string{RoleProvider}) || c.ActsFor != acct(shop) || c.Account != acct(inference) {
		t.Fatalf("WhoAmI of the inference service: %+v", c)
	}
	if c := h.whoAmI(bob); c.ActsFor != acct(bob) {
		t.Errorf("a provider granted without acts_for acts for itself: %+v", c)
	}
	h.must(admin, func(l *Ledger) error { _, err := l.Mint(acct(alice), 1000); return err })
	hp := h.freeze(alice, "hp", shop, 100).ID
	hq := h.freeze(alice, "hq", bob, 100).ID

	// The shop's services serve and settle the shop's hold; the shop is paid.
	h.must(inference, func(l *Ledger) error { _, err := l.Authorize(hp, 40); return err })
	if _, err := h.settle(settlement, hp, 4, 1, keyOf(alice).sign(hp, 4, 1)); err != nil {
		t.Fatal(err)
	}
	if got := h.balance(shop); got != 40 {
		t.Errorf("shop %d, want 40", got)
	}
	if raw := h.state.values[AccountKey(acct(inference))]; raw != nil {
		t.Errorf("the service identity itself is paid nothing, has %s", raw)
	}

	// Not another provider's hold, in either direction.
	for _, who := range []IdentityFacts{inference, settlement} {
		err := h.as(who, func(l *Ledger) error { _, err := l.Authorize(hq, 1); return err })
		wantErr(t, err, ErrForbidden, "hold_id")
		_, err = h.settle(who, hq, 1, 1, keyOf(alice).sign(hq, 1, 1))
		wantErr(t, err, ErrForbidden, "hold_id")
		err = h.record(who, hq, 1, 1, keyOf(alice).sign(hq, 1, 1))
		wantErr(t, err, ErrForbidden, "hold_id")
		_, err = h.release(who, hq)
		wantErr(t, err, ErrForbidden, "hold_id")
		err = h.as(who, func(l *Ledger) error { _, err := l.GetHold(hq); return err })
		wantErr(t, err, ErrForbidden, "hold_id")
		err = h.as(who, func(l *Ledger) error { _, err := l.Balance(acct(bob)); return err })
		wantErr(t, err, ErrForbidden, "account")
	}
	hp2 := h.freeze(alice, "hp2", shop, 10).ID
	_, err := h.settle(bob, hp2, 0, 0, "")
	wantErr(t, err, ErrForbidden, "hold_id")
	// The provider account's owner without the provider role cannot settle its own holds.
	_, err = h.settle(shop, hp2, 0, 0, "")
	wantErr(t, err, ErrForbidden, "creator")

	// What it acts for, it reads.
	h.must(inference, func(l *Ledger) error {
		holds, err := l.HoldsOf(acct(shop))
		if err == nil && len(holds) != 2 {
			t.Errorf("holds of the shop: %+v", holds)
		}
		return err
	})
	h.must(inference, func(l *Ledger) error { _, err := l.GetHold(hp); return err })
}

func TestReadsNeedARoleOrAPart(t *testing.T) {
	h := newHarness(t)
	h.must(admin, func(l *Ledger) error { _, err := l.Mint(acct(alice), 100); return err })
	h1 := h.freeze(alice, "n1", bob, 10).ID
	h.must(operator, func(l *Ledger) error { _, err := l.AnchorBatch("t:0:0-0", root1, 1, 0, 0); return err })
	h.must(operator, func(l *Ledger) error { _, err := l.RegisterModel("m", 1, root1); return err })

	// Anyone may ask who it is, role or not.
	if c := h.whoAmI(stranger); c.Account != acct(stranger) || c.Roles == nil || len(c.Roles) != 0 || c.IsAdmin {
		t.Errorf("WhoAmI of a caller without roles: %+v", c)
	}
	refused := []struct {
		name  string
		read  func(l *Ledger) error
		field string
	}{
		{"GetAnchor", func(l *Ledger) error { _, err := l.GetAnchor("t:0:0-0"); return err }, "creator"},
		{"GetModel", func(l *Ledger) error { _, err := l.GetModel("m", 0); return err }, "creator"},
		{"GetRoles", func(l *Ledger) error { _, err := l.GetRoles(acct(alice)); return err }, "creator"},
		{"Balance", func(l *Ledger) error { _, err := l.Balance(acct(alice)); return err }, "account"},
		{"HoldsOf", func(l *Ledger) error { _, err := l.HoldsOf(acct(alice)); return err }, "account"},
		{"GetHold", func(l *Ledger) error { _, err := l.GetHold(h1); return err }, "hold_id"},
		{"History", func(l *Ledger) error { _, err := l.History(AnchorKey("t:0:0-0")); return err }, "creator"},
		{"History of roles", func(l *Ledger) error { _, err := l.History(RoleKey(acct(alice))); return err }, "creator"},
	}
	for _, r := range refused {
		err := h.as(stranger, r.read)
		t.Run(r.name, func(t *testing.T) { wantErr(t, err, ErrForbidden, r.field) })
	}
	// A client reads the shared records but not another client's account or hold.
	h.must(carol, func(l *Ledger) error { _, err := l.GetAnchor("t:0:0-0"); return err })
	h.must(carol, func(l *Ledger) error { _, err := l.GetModel("m", 0); return err })
	for _, r := range refused[3:] {
		err := h.as(carol, r.read)
		t.Run("client "+r.name, func(t *testing.T) { wantErr(t, err, ErrForbidden, r.field) })
	}
	// An auditor reads everything.
	for _, r := range refused {
		if err := h.as(auditor, r.read); err != nil {
			t.Errorf("auditor %s: %v", r.name, err)
		}
	}
	// An admin without grants reads the shared records and role history, not accounts.
	for _, r := range refused {
		err := h.as(admin, r.read)
		switch r.name {
		case "GetAnchor", "GetModel", "GetRoles", "History of roles":
			if err != nil {
				t.Errorf("admin %s: %v", r.name, err)
			}
		default:
			wantErr(t, err, ErrForbidden, r.field)
		}
	}
	// The provider of a hold reads it and its own account.
	h.must(bob, func(l *Ledger) error { _, err := l.GetHold(h1); return err })
	h.must(bob, func(l *Ledger) error { _, err := l.HoldsOf(acct(bob)); return err })
}

func TestAdminDoesNothingButMintAndGrant(t *testing.T) {
	h := newHarness(t)
	h.must(admin, func(l *Ledger) error { _, err := l.Mint(acct(admin), 100); return err })
	expires := h.now.Unix() + 60
	attempts := map[string]func(l *Ledger) error{
		"Transfer":      func(l *Ledger) error { _, err := l.Transfer(acct(bob), 1); return err },
		"Freeze":        func(l *Ledger) error { _, err := l.Freeze("n1", acct(bob), 1, 1, expires, 0); return err },
		"AnchorBatch":   func(l *Ledger) error { _, err := l.AnchorBatch("t:0:0-0", root1, 1, 0, 0); return err },
		"RegisterModel": func(l *Ledger) error { _, err := l.RegisterModel("m", 1, root1); return err },
		"Authorize":     func(l *Ledger) error { _, err := l.Authorize("h1", 1); return err },
		"Settle":        func(l *Ledger) error { _, err := l.Settle("h1", 0, 0, ""); return err },
		"RecordReceipt": func(l *Ledger) error { _, err := l.RecordReceipt("h1", 1, 1, "AA=="); return err },
	}
	for name, attempt := range attempts {
		err := h.as(admin, attempt)
		t.Run(name, func(t *testing.T) { wantErr(t, err, ErrForbidden, "creator") })
	}
	// Granted a role, like anyone, the admin may use it.
	h.grant(admin, RoleOperator, "")
	h.grant(admin, RoleClient, "")
	for _, name := range []string{"AnchorBatch", "RegisterModel", "Freeze", "Transfer"} {
		if err := h.as(admin, attempts[name]); err != nil {
			t.Errorf("admin with the grant, %s: %v", name, err)
		}
	}
	if c := h.whoAmI(admin); !c.IsAdmin || !slices.Equal(c.Roles, []string{RoleClient, RoleOperator}) {
		t.Errorf("WhoAmI of the admin %+v", c)
	}
}
