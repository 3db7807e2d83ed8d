package ledger

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"slices"
	"sync"
	"testing"
	"time"
)

// mapState is an in-memory State for unit tests of the rules. It behaves like
// Fabric's simulation: writes are buffered per transaction and applied only
// when the rule succeeds (a rejected call leaves no trace), and reads see only
// committed values, never the transaction's own writes.
type mapState struct {
	index        map[string][]string // index+"/"+owner -> sorted ids, committed
	pendingIndex map[string][]string
	values       map[string][]byte
	history      map[string][]HistoryEntry
	pending      map[string][]byte
	events       []event
	txEvent      *event
	tx           int
}

type event struct {
	Name    string
	Payload []byte
}

func newMapState() *mapState {
	return &mapState{values: map[string][]byte{}, history: map[string][]HistoryEntry{}, index: map[string][]string{}}
}

func (s *mapState) Get(key string) ([]byte, error) { return s.values[key], nil }

func (s *mapState) Put(key string, value []byte) error {
	s.pending[key] = value
	return nil
}

func (s *mapState) History(key string) ([]HistoryEntry, error) { return s.history[key], nil }

func (s *mapState) IndexAdd(index, owner, id string) error {
	key := index + "/" + owner
	s.pendingIndex[key] = append(s.pendingIndex[key], id)
	return nil
}

func (s *mapState) IndexList(index, owner string) ([]string, error) {
	return slices.Clone(s.index[index+"/"+owner]), nil
}

func (s *mapState) Emit(name string, payload []byte) error {
	s.txEvent = &event{name, payload}
	return nil
}

// harness runs each rule call as one transaction at a controllable time.
type harness struct {
	t        *testing.T
	state    *mapState
	now      time.Time
	settings Settings
}

// newHarness starts a ledger where each identity below holds the role its
// name says, granted by the admin of its organisation.
func newHarness(t *testing.T) *harness {
	h := &harness{t: t, state: newMapState(), now: time.Unix(1_800_000_000, 0), settings: DefaultSettings}
	h.grant(operator, RoleOperator, "")
	h.grant(rival, RoleOperator, "")
	h.grant(alice, RoleClient, "")
	h.grant(bob, RoleProvider, "")
	h.grant(carol, RoleClient, "")
	h.grant(auditor, RoleAuditor, "")
	return h
}

var (
	admin    = IdentityFacts{MSPID: "Org1MSP", Subject: "CN=Admin@org1.example.com,OU=admin", OUs: []string{"admin"}}
	operator = IdentityFacts{MSPID: "Org1MSP", Subject: "CN=ledger-service,OU=client", OUs: []string{"client"}}
	alice    = IdentityFacts{MSPID: "Org1MSP", Subject: "CN=alice,OU=client", OUs: []string{"client"}}
	bob      = IdentityFacts{MSPID: "Org1MSP", Subject: "CN=bob,OU=client", OUs: []string{"client"}} // a provider, for itself
	auditor  = IdentityFacts{MSPID: "Org1MSP", Subject: "CN=audit,OU=client", OUs: []string{"client"}}
	carol    = IdentityFacts{MSPID: "Org2MSP", Subject: "CN=carol,OU=client", OUs: []string{"client"}}
	// The admin of the client organisation: it may grant roles in Org2MSP, nothing more.
	org2Admin = IdentityFacts{MSPID: "Org2MSP", Subject: "CN=Admin@org2.example.com,OU=admin", OUs: []string{"admin"}}
	// Holds no role at all.
	stranger = IdentityFacts{MSPID: "Org1MSP", Subject: "CN=stranger,OU=client", OUs: []string{"client"}}
	// An operator of the other organisation, for squatting attempts.
	rival = IdentityFacts{MSPID: "Org2MSP", Subject: "CN=rival,OU=client", OUs: []string{"client"}}
)

// testKey is an identity's signing key and self-signed certificate (DER).
type testKey struct {
	key  *ecdsa.PrivateKey
	cert []byte
}

var testKeys = struct {
	sync.Mutex
	bySubject map[string]testKey
}{bySubject: map[string]testKey{}}

// keyOf returns f's key, made on first use: one per MSP and subject, like a certificate.
func keyOf(f IdentityFacts) testKey {
	testKeys.Lock()
	defer testKeys.Unlock()
	id := acct(f)
	if k, ok := testKeys.bySubject[id]; ok {
		return k
	}
	k := newTestKey(f.Subject)
	testKeys.bySubject[id] = k
	return k
}

func newTestKey(subject string) testKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: subject},
		NotBefore: time.Unix(1_700_000_000, 0), NotAfter: time.Unix(1_900_000_000, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return testKey{key: key, cert: der}
}

// sign is k's receipt signature, base64 as the contract takes it.
func (k testKey) sign(holdID string, units, sequence int64) string {
	digest := sha256.Sum256(ReceiptMessage(holdID, units, sequence))
	sig, err := ecdsa.SignASN1(rand.Reader, k.key, digest[:])
	if err != nil {
		panic(err)
	}
	return base64.StdEncoding.EncodeToString(sig)
}

func acct(f IdentityFacts) string { return AccountID(f.MSPID, f.Subject) }

// adminOf returns the admin identity of mspID's organisation.
func adminOf(mspID string) IdentityFacts {
	if mspID == org2Admin.MSPID {
		return org2Admin
	}
	return admin
}

// grant gives role to f, as the admin of f's organisation.
func (h *harness) grant(f IdentityFacts, role, actsFor string) {
	h.t.Helper()
	h.must(adminOf(f.MSPID), func(l *Ledger) error { _, err := l.GrantRole(acct(f), role, actsFor); return err })
}

// as runs fn as one transaction by identity f and commits its writes only on success.
func (h *harness) as(f IdentityFacts, fn func(l *Ledger) error) error {
	h.t.Helper()
	h.state.tx++
	txID := fmt.Sprintf("tx%d", h.state.tx)
	h.state.pending, h.state.pendingIndex, h.state.txEvent = map[string][]byte{}, map[string][]string{}, nil
	if f.Certificate == nil {
		f.Certificate = keyOf(f).cert
	}
	l, err := New(h.state, h.settings, f, h.now, txID)
	if err == nil {
		err = fn(l)
	}
	if err == nil {
		for k, v := range h.state.pending {
			h.state.values[k] = v
			h.state.history[k] = append(h.state.history[k], HistoryEntry{TxID: txID, Timestamp: h.now.UTC().Format(time.RFC3339Nano), Value: string(v)})
		}
		for k, ids := range h.state.pendingIndex {
			for _, id := range ids {
				if !slices.Contains(h.state.index[k], id) {
					h.state.index[k] = append(h.state.index[k], id)
				}
			}
			slices.Sort(h.state.index[k])
		}
		if h.state.txEvent != nil {
			h.state.events = append(h.state.events, *h.state.txEvent)
		}
	}
	h.state.pending = nil
	return err
}

func (h *harness) must(f IdentityFacts, fn func(l *Ledger) error) {
	h.t.Helper()
	if err := h.as(f, fn); err != nil {
		h.t.Fatalf("unexpected error: %v", err)
	}
}

func (h *harness) balance(f IdentityFacts) int64 {
	h.t.Helper()
	var got int64
	h.must(auditor, func(l *Ledger) error {
		a, err := l.Balance(acct(f))
		got = a.Balance
		return err
	})
	return got
}

func (h *harness) lastEvent() event {
	h.t.Helper()
	if len(h.state.events) == 0 {
		h.t.Fatal("no chaincode event was emitted")
	}
	return h.state.events[len(h.state.events)-1]
}

// certIs reports whether certPEM holds exactly the certificate der.
func certIs(certPEM string, der []byte) bool {
	block, _ := pem.Decode([]byte(certPEM))
	return block != nil && block.Type == "CERTIFICATE" && string(block.Bytes) == string(der)
}
