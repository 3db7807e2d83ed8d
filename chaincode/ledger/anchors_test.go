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
	h.must(operator, func(l *Ledger) error {
		_, err := l.AnchorBatch("events.clean:0:0-999", root1, 1000, 0, 999)
		return err
	})
	ev := h.lastEvent()
	var evAnchor Anchor
	if err := json.Unmarshal(ev.Payload, &evAnchor); err != nil || ev.Name != EventBatchAnchored || evAnchor.MerkleRoot != root1 {
		t.Fatalf("anchor event %q %s", ev.Name, ev.Payload)
	}
	h.must(carol, func(l *Ledger) error {
		a, err := l.GetAnchor("events.clean:0:0-999")
		if err == nil && (a.MerkleRoot != root1 || a.Count != 1000 || a.TxID == "" || a.TxID != evAnchor.TxID || a.Submitter != acct(operator)) {
			t.Errorf("read back %+v", a)
		}
		return err
	})
	// An identical replay is accepted without a second event; other content conflicts.
	events := len(h.state.events)
	h.must(operator, func(l *Ledger) error {
		_, err := l.AnchorBatch("events.clean:0:0-999", root1, 1000, 0, 999)
		return err
	})
	if len(h.state.events) != events {
		t.Error("a replayed anchor emitted a second event")
	}
	err := h.as(operator, func(l *Ledger) error {
		_, err := l.AnchorBatch("events.clean:0:0-999", root2, 1000, 0, 999)
		return err
	})
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
		{"plain client", alice, "t:0:0-0", root1, 1, 0, 0, ErrForbidden, "creator"},
		{"provider", bob, "t:0:0-0", root1, 1, 0, 0, ErrForbidden, "creator"},
		{"admin without the grant", admin, "t:0:0-0", root1, 1, 0, 0, ErrForbidden, "creator"},
		{"other org admin", org2Admin, "t:0:0-0", root1, 1, 0, 0, ErrForbidden, "creator"},
		{"uppercase root", operator, "t:0:0-0", strings.ToUpper(root1), 1, 0, 0, ErrInvalidArgument, "merkle_root"},
		{"short root", operator, "t:0:0-0", "abcd", 1, 0, 0, ErrInvalidArgument, "merkle_root"},
		{"zero count", operator, "t:0:0-0", root1, 0, 0, 0, ErrInvalidArgument, "count"},
		{"more records than offsets", operator, "t:0:0-9", root1, 11, 0, 9, ErrInvalidArgument, "count"},
		{"negative offset", operator, "t:0:-1-0", root1, 1, -1, 0, ErrInvalidArgument, "first_offset"},
		{"reversed range", operator, "t:0:10-9", root1, 1, 10, 9, ErrInvalidArgument, "last_offset"},
		{"bad batch id", operator, "b 1", root1, 1, 0, 0, ErrInvalidArgument, "batch_id"},
		// The id names the offsets anchored, in the anchorer's form <topic>:<partition>:<first>-<last>.
		{"id of other offsets", operator, "t:0:0-9", root1, 1, 0, 8, ErrInvalidArgument, "batch_id"},
		{"id without a partition", operator, "t:0-9", root1, 1, 0, 9, ErrInvalidArgument, "batch_id"},
		{"id without a topic", operator, ":0:0-9", root1, 1, 0, 9, ErrInvalidArgument, "batch_id"},
		{"id with a leading zero", operator, "t:0:00-9", root1, 1, 0, 9, ErrInvalidArgument, "batch_id"},
		{"id with a negative partition", operator, "t:-1:0-9", root1, 1, 0, 9, ErrInvalidArgument, "batch_id"},
		{"id with a colon in the topic", operator, "a:b:0:0-9", root1, 1, 0, 9, ErrInvalidArgument, "batch_id"},
		{"free-form id", operator, "b1", root1, 1, 0, 0, ErrInvalidArgument, "batch_id"},
	}
	for _, c := range cases {
		err := h.as(c.who, func(l *Ledger) error { _, err := l.AnchorBatch(c.batch, c.root, c.count, c.a, c.b); return err })
		t.Run(c.name, func(t *testing.T) { wantErr(t, err, c.sentinel, c.field) })
	}
	err := h.as(alice, func(l *Ledger) error { _, err := l.GetAnchor("t:0:0-0"); return err })
	wantErr(t, err, ErrNotFound, "batch_id")
	if got := BatchID("events.clean", 2, 1000, 1999); got != "events.clean:2:1000-1999" {
		t.Errorf("BatchID %q", got)
	}
}

// Squatting: a topic's batches belong to the operator account that anchored
// it first; no other operator, of either organisation, anchors a batch of it.
func TestAnchorsCannotBeSquatted(t *testing.T) {
	h := newHarness(t)
	anchor := func(who IdentityFacts, batch string, first, last int64) error {
		return h.as(who, func(l *Ledger) error { _, err := l.AnchorBatch(batch, root1, last-first+1, first, last); return err })
	}
	if err := anchor(operator, "events.clean:0:0-99", 0, 99); err != nil {
		t.Fatal(err)
	}
	h.must(auditor, func(l *Ledger) error {
		topic, err := l.GetTopic("events.clean")
		if err == nil && (topic.Owner != acct(operator) || topic.TxID == "") {
			t.Errorf("topic %+v", topic)
		}
		return err
	})
	// A future batch of the topic, on this partition or another: refused for the rival.
	wantErr(t, anchor(rival, "events.clean:0:100-199", 100, 199), ErrForbidden, "batch_id")
	wantErr(t, anchor(rival, "events.clean:7:0-9", 0, 9), ErrForbidden, "batch_id")
	// And the owner then anchors it; gaps in offsets are normal in Kafka.
	if err := anchor(operator, "events.clean:0:100-199", 100, 199); err != nil {
		t.Fatal(err)
	}
	h.must(operator, func(l *Ledger) error {
		_, err := l.AnchorBatch("events.clean:0:205-300", root1, 3, 205, 300)
		return err
	})
	// The rival's own topic is its own.
	if err := anchor(rival, "rival.events:0:0-9", 0, 9); err != nil {
		t.Fatal(err)
	}
	wantErr(t, anchor(operator, "rival.events:0:10-19", 10, 19), ErrForbidden, "batch_id")
	err := h.as(alice, func(l *Ledger) error { _, err := l.GetTopic("never.anchored"); return err })
	wantErr(t, err, ErrNotFound, "topic")
	err = h.as(alice, func(l *Ledger) error { _, err := l.GetTopic("bad topic"); return err })
	wantErr(t, err, ErrInvalidArgument, "topic")
	err = h.as(stranger, func(l *Ledger) error { _, err := l.GetTopic("events.clean"); return err })
	wantErr(t, err, ErrForbidden, "creator")
}

func TestRegisterModelAndGet(t *testing.T) {
	h := newHarness(t)
	h.must(operator, func(l *Ledger) error { _, err := l.RegisterModel("fraud", 1, root1); return err })
	h.must(operator, func(l *Ledger) error { _, err := l.RegisterModel("fraud", 2, root1); return err })
	h.must(operator, func(l *Ledger) error { _, err := l.RegisterModel("fraud", 3, root2); return err })
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

// Squatting: versions go up by one, and only the operator that registered a
// model's latest version registers the next.
func TestModelVersionsCannotBeSquatted(t *testing.T) {
	h := newHarness(t)
	register := func(who IdentityFacts, model string, version int64, sha string) error {
		return h.as(who, func(l *Ledger) error { _, err := l.RegisterModel(model, version, sha); return err })
	}
	wantErr(t, register(operator, "fraud", 2, root1), ErrConflict, "version") // the first version is 1
	if err := register(operator, "fraud", 1, root1); err != nil {
		t.Fatal(err)
	}
	// A future version, by anyone, is refused: it would block the real one.
	wantErr(t, register(rival, "fraud", 3, root2), ErrConflict, "version")
	wantErr(t, register(operator, "fraud", 3, root2), ErrConflict, "version")
	// The next version, by another operator, is refused too.
	wantErr(t, register(rival, "fraud", 2, root2), ErrForbidden, "model_id")
	if err := register(operator, "fraud", 2, root2); err != nil {
		t.Fatal(err)
	}
	// A replay of a registered version is a no-op (even from the rival: it changes nothing).
	if err := register(operator, "fraud", 1, root1); err != nil {
		t.Errorf("replay of version 1: %v", err)
	}
	// The rival's own models are its own.
	if err := register(rival, "rival-model", 1, root1); err != nil {
		t.Fatal(err)
	}
	wantErr(t, register(operator, "rival-model", 2, root1), ErrForbidden, "model_id")
}

func TestHistory(t *testing.T) {
	h, hold := fundedHarness(t)
	if err := h.authorize(bob, hold.ID, 10); err != nil {
		t.Fatal(err)
	}
	if _, err := h.settle(bob, hold.ID, 1, 1, keyOf(alice).sign(hold.ID, 1, 1)); err != nil {
		t.Fatal(err)
	}
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
