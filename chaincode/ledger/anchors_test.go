package ledger

import (
	"encoding/json"
	"strings"
	"testing"
)

var root1 = strings.Repeat("ab", 32)
var root2 = strings.Repeat("cd", 32)

func TestAnchorBatchAndReadBack(t *testing.T) {
	h := newHarness(t)
	h.must(operator, func(l *Ledger) error { _, err := l.AnchorBatch("p0-0-999", root1, 1000, 0, 999); return err })
	ev := h.lastEvent()
	var evAnchor Anchor
	if err := json.Unmarshal(ev.Payload, &evAnchor); err != nil || ev.Name != EventBatchAnchored || evAnchor.MerkleRoot != root1 {
		t.Fatalf("anchor event %q %s", ev.Name, ev.Payload)
	}
	h.must(carol, func(l *Ledger) error {
		a, err := l.GetAnchor("p0-0-999")
		if err == nil && (a.MerkleRoot != root1 || a.Count != 1000 || a.TxID == "" || a.TxID != evAnchor.TxID || a.Submitter != acct(operator)) {
			t.Errorf("read back %+v", a)
		}
		return err
	})
	// An identical replay is accepted without a second event; other content conflicts.
	events := len(h.state.events)
	h.must(operator, func(l *Ledger) error { _, err := l.AnchorBatch("p0-0-999", root1, 1000, 0, 999); return err })
	if len(h.state.events) != events {
		t.Error("a replayed anchor emitted a second event")
	}
	err := h.as(operator, func(l *Ledger) error { _, err := l.AnchorBatch("p0-0-999", root2, 1000, 0, 999); return err })
	wantErr(t, err, ErrConflict, "batch_id")
}

func TestAnchorRules(t *testing.T) {
	h := newHarness(t)
	cases := []struct {
		name        string
		who         IdentityFacts
		batch, root string
		count, a, b int64
		sentinel    error
		field       string
	}{
		{"plain client", alice, "b1", root1, 1, 0, 0, ErrForbidden, "creator"},
		{"provider", bob, "b1", root1, 1, 0, 0, ErrForbidden, "creator"},
		{"admin without the grant", admin, "b1", root1, 1, 0, 0, ErrForbidden, "creator"},
		{"other org admin", org2Admin, "b1", root1, 1, 0, 0, ErrForbidden, "creator"},
		{"uppercase root", operator, "b1", strings.ToUpper(root1), 1, 0, 0, ErrInvalidArgument, "merkle_root"},
		{"short root", operator, "b1", "abcd", 1, 0, 0, ErrInvalidArgument, "merkle_root"},
		{"zero count", operator, "b1", root1, 0, 0, 0, ErrInvalidArgument, "count"},
		{"negative offset", operator, "b1", root1, 1, -1, 0, ErrInvalidArgument, "first_offset"},
		{"reversed range", operator, "b1", root1, 1, 10, 9, ErrInvalidArgument, "last_offset"},
		{"bad batch id", operator, "b 1", root1, 1, 0, 0, ErrInvalidArgument, "batch_id"},
	}
	for _, c := range cases {
		err := h.as(c.who, func(l *Ledger) error { _, err := l.AnchorBatch(c.batch, c.root, c.count, c.a, c.b); return err })
		t.Run(c.name, func(t *testing.T) { wantErr(t, err, c.sentinel, c.field) })
	}
	err := h.as(alice, func(l *Ledger) error { _, err := l.GetAnchor("b1"); return err })
	wantErr(t, err, ErrNotFound, "batch_id")
}

func TestRegisterModelAndGet(t *testing.T) {
	h := newHarness(t)
	h.must(operator, func(l *Ledger) error { _, err := l.RegisterModel("fraud", 1, root1); return err })
	h.must(operator, func(l *Ledger) error { _, err := l.RegisterModel("fraud", 3, root2); return err })
	h.must(operator, func(l *Ledger) error { _, err := l.RegisterModel("fraud", 2, root1); return err })
	if ev := h.lastEvent(); ev.Name != EventModelRegistered {
		t.Errorf("register emitted %q", ev.Name)
	}
	h.must(alice, func(l *Ledger) error {
		m, err := l.GetModel("fraud", 0)
		if err == nil && (m.Version != 3 || m.SHA256 != root2) {
			t.Errorf("latest is %+v, want version 3", m)
		}
		return err
	})
	h.must(alice, func(l *Ledger) error {
		m, err := l.GetModel("fraud", 1)
		if err == nil && m.SHA256 != root1 {
			t.Errorf("version 1 is %+v", m)
		}
		return err
	})
	err := h.as(operator, func(l *Ledger) error { _, err := l.RegisterModel("fraud", 1, root2); return err })
	wantErr(t, err, ErrConflict, "sha256")
	for _, who := range []IdentityFacts{alice, admin, org2Admin, auditor} {
		err = h.as(who, func(l *Ledger) error { _, err := l.RegisterModel("mine", 1, root1); return err })
		wantErr(t, err, ErrForbidden, "creator")
	}
	err = h.as(operator, func(l *Ledger) error { _, err := l.RegisterModel("fraud", 0, root1); return err })
	wantErr(t, err, ErrInvalidArgument, "version")
	err = h.as(alice, func(l *Ledger) error { _, err := l.GetModel("fraud", 9); return err })
	wantErr(t, err, ErrNotFound, "version")
	err = h.as(alice, func(l *Ledger) error { _, err := l.GetModel("other", 0); return err })
	wantErr(t, err, ErrNotFound, "model_id")
}

func TestHistory(t *testing.T) {
	h := fundedHarness(t)
	h.must(bob, func(l *Ledger) error { _, err := l.Settle("h1", 10, 1); return err })
	var entries []HistoryEntry
	h.must(auditor, func(l *Ledger) error {
		var err error
		entries, err = l.History(AccountKey(acct(alice)))
		return err
	})
	// mint, freeze, settlement refund
	want := []int64{1000, 600, 990}
	if len(entries) != len(want) {
		t.Fatalf("history has %d entries, want %d: %+v", len(entries), len(want), entries)
	}
	for i, e := range entries {
		var a Account
		if err := json.Unmarshal([]byte(e.Value), &a); err != nil || a.Balance != want[i] || e.TxID == "" {
			t.Errorf("entry %d: %+v", i, e)
		}
	}
	h.must(auditor, func(l *Ledger) error {
		got, err := l.History(HoldKey("unknown"))
		if err == nil && (got == nil || len(got) != 0) {
			t.Errorf("history of an unwritten key should be an empty list, got %#v", got)
		}
		return err
	})
	for _, bad := range []string{"", "balance:x", "account:"} {
		err := h.as(auditor, func(l *Ledger) error { _, err := l.History(bad); return err })
		wantErr(t, err, ErrInvalidArgument, "key")
	}
	// Only auditors read history: not the account's owner, not an admin.
	for _, who := range []IdentityFacts{alice, bob, carol, admin} {
		err := h.as(who, func(l *Ledger) error { _, err := l.History(AccountKey(acct(alice))); return err })
		wantErr(t, err, ErrForbidden, "creator")
	}
}
