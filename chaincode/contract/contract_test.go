package contract

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hyperledger/fabric-chaincode-go/v2/shim"
	"github.com/hyperledger/fabric-contract-api-go/v2/contractapi"
	"github.com/hyperledger/fabric-protos-go-apiv2/ledger/queryresult"
	"github.com/hyperledger/fabric-protos-go-apiv2/msp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/streamledger/streamledger/chaincode/ledger"
)

// fakeStub implements the few stub calls the contract makes; any other call
// panics through the nil embedded interface, which would show up as a test
// failure. Like a peer, it reads committed state only and commits a
// transaction's writes only when the transaction succeeds.
type fakeStub struct {
	shim.ChaincodeStubInterface
	world   map[string][]byte
	pending map[string][]byte
	history map[string][]*queryresult.KeyModification
	creator []byte
	args    []string
	txID    string
	now     time.Time
	event   string
	payload []byte
}

func (s *fakeStub) GetFunctionAndParameters() (string, []string) { return s.args[0], s.args[1:] }
func (s *fakeStub) GetCreator() ([]byte, error)                  { return s.creator, nil }
func (s *fakeStub) GetTxID() string                              { return s.txID }
func (s *fakeStub) GetTxTimestamp() (*timestamppb.Timestamp, error) {
	return timestamppb.New(s.now), nil
}
func (s *fakeStub) GetState(key string) ([]byte, error) { return s.world[key], nil }
func (s *fakeStub) PutState(key string, value []byte) error {
	s.pending[key] = value
	return nil
}

func (s *fakeStub) commit() {
	for key, value := range s.pending {
		s.world[key] = value
		s.history[key] = append(s.history[key], &queryresult.KeyModification{TxId: s.txID, Value: value, Timestamp: timestamppb.New(s.now)})
	}
}
func (s *fakeStub) SetEvent(name string, payload []byte) error {
	s.event, s.payload = name, payload
	return nil
}

// Composite keys as Fabric builds them: NUL, type, NUL, then each attribute and NUL.
func (s *fakeStub) CreateCompositeKey(objectType string, attrs []string) (string, error) {
	return "\x00" + objectType + "\x00" + strings.Join(attrs, "\x00") + "\x00", nil
}

func (s *fakeStub) SplitCompositeKey(key string) (string, []string, error) {
	parts := strings.Split(strings.Trim(key, "\x00"), "\x00")
	return parts[0], parts[1:], nil
}

func (s *fakeStub) GetStateByPartialCompositeKey(objectType string, attrs []string) (shim.StateQueryIteratorInterface, error) {
	prefix, _ := s.CreateCompositeKey(objectType, attrs)
	var keys []string
	for k := range s.world {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	it := &rangeIterator{}
	for _, k := range keys {
		it.kvs = append(it.kvs, &queryresult.KV{Key: k, Value: s.world[k]})
	}
	return it, nil
}

type rangeIterator struct {
	kvs  []*queryresult.KV
	next int
}

func (it *rangeIterator) HasNext() bool { return it.next < len(it.kvs) }
func (it *rangeIterator) Close() error  { return nil }
func (it *rangeIterator) Next() (*queryresult.KV, error) {
	it.next++
	return it.kvs[it.next-1], nil
}

func (s *fakeStub) GetHistoryForKey(key string) (shim.HistoryQueryIteratorInterface, error) {
	return &historyIterator{entries: s.history[key]}, nil
}

type historyIterator struct {
	entries []*queryresult.KeyModification
	next    int
}

func (it *historyIterator) HasNext() bool { return it.next < len(it.entries) }
func (it *historyIterator) Close() error  { return nil }
func (it *historyIterator) Next() (*queryresult.KeyModification, error) {
	it.next++
	return it.entries[it.next-1], nil
}

// identity returns a serialized MSP identity with a fresh self-signed certificate.
func identity(t *testing.T, mspID, cn, ou string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: cn, OrganizationalUnit: []string{ou}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	raw, err := proto.Marshal(&msp.SerializedIdentity{Mspid: mspID, IdBytes: pemBytes})
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

type network struct {
	t     *testing.T
	cc    *contractapi.ContractChaincode
	stub  *fakeStub
	txNum int
}

func newNetwork(t *testing.T) *network {
	cc, err := NewChaincode(ledger.DefaultRolePolicy)
	if err != nil {
		t.Fatal(err)
	}
	stub := &fakeStub{world: map[string][]byte{}, history: map[string][]*queryresult.KeyModification{}, now: time.Unix(1_800_000_000, 0)}
	return &network{t: t, cc: cc, stub: stub}
}

// invoke runs one transaction and returns (status, payload, message).
func (n *network) invoke(creator []byte, args ...string) (int32, []byte, string) {
	n.txNum++
	n.stub.creator, n.stub.args, n.stub.event = creator, args, ""
	n.stub.txID = "tx" + itoa(int64(n.txNum))
	n.stub.pending = map[string][]byte{}
	resp := n.cc.Invoke(n.stub)
	if resp.Status == shim.OK {
		n.stub.commit()
	}
	return resp.Status, resp.Payload, resp.Message
}

func (n *network) ok(creator []byte, out any, args ...string) {
	n.t.Helper()
	status, payload, msg := n.invoke(creator, args...)
	if status != shim.OK {
		n.t.Fatalf("%v: status %d: %s", args, status, msg)
	}
	if out != nil {
		if err := json.Unmarshal(payload, out); err != nil {
			n.t.Fatalf("%v: decoding %s: %v", args, payload, err)
		}
	}
}

func (n *network) rejected(creator []byte, wantInMessage string, args ...string) {
	n.t.Helper()
	status, _, msg := n.invoke(creator, args...)
	if status == shim.OK || !strings.Contains(msg, wantInMessage) {
		n.t.Fatalf("%v: want rejection mentioning %q, got status %d %q", args, wantInMessage, status, msg)
	}
}

func TestContractEndToEndThroughContractAPI(t *testing.T) {
	n := newNetwork(t)
	admin := identity(t, "Org1MSP", "Admin@org1.example.com", "admin")
	alice := identity(t, "Org1MSP", "alice", "client")
	bob := identity(t, "Org1MSP", "bob", "client")
	operator := identity(t, "Org1MSP", "anchoring", "client")
	auditor := identity(t, "Org1MSP", "audit", "client")

	var me ledger.Caller
	n.ok(alice, &me, "WhoAmI")
	if me.Account != "Org1MSP::CN=alice,OU=client" || me.IsAdmin || len(me.Roles) != 0 {
		t.Fatalf("WhoAmI for alice: %+v", me)
	}
	var bobMe ledger.Caller
	n.ok(bob, &bobMe, "WhoAmI")
	n.ok(admin, nil, "GrantRole", me.Account, ledger.RoleClient, "")
	n.ok(admin, nil, "GrantRole", bobMe.Account, ledger.RoleProvider, "")
	n.ok(admin, nil, "GrantRole", "Org1MSP::CN=anchoring,OU=client", ledger.RoleOperator, "")
	n.ok(admin, nil, "GrantRole", "Org1MSP::CN=audit,OU=client", ledger.RoleAuditor, "")

	var acct ledger.Account
	n.ok(admin, &acct, "Mint", me.Account, "1000")
	if acct.Balance != 1000 {
		t.Fatalf("minted %+v", acct)
	}
	n.rejected(alice, "FORBIDDEN", "Mint", me.Account, "5")
	n.rejected(alice, `INVALID_ARGUMENT: "amount"`, "Transfer", bobMe.Account, "-5")
	n.rejected(alice, "INSUFFICIENT_FUNDS", "Transfer", bobMe.Account, "1001")
	// The contract API itself refuses arguments of the wrong type, naming the
	// parameter by position (param1 = the second argument, amount).
	n.rejected(alice, "param1. conversion error. cannot convert passed value ten to int64", "Transfer", bobMe.Account, "ten")
	n.rejected(alice, "Function Nope not found", "Nope")

	expires := n.stub.now.Unix() + 3600
	var hold ledger.Hold
	n.ok(alice, &hold, "Freeze", "h1", me.Account, bobMe.Account, "400", itoa(expires))
	if n.stub.event != ledger.EventHoldFrozen || hold.Status != ledger.HoldOpen {
		t.Fatalf("freeze: event %q hold %+v", n.stub.event, hold)
	}
	n.ok(bob, &hold, "Authorize", "h1", "100")
	var s ledger.Settlement
	n.ok(bob, &s, "Settle", "h1", "30", "10")
	if s.Charged != 300 || s.Refunded != 100 || n.stub.event != ledger.EventHoldSettled {
		t.Fatalf("settlement %+v, event %q", s, n.stub.event)
	}
	n.rejected(bob, "ALREADY_SETTLED", "Settle", "h1", "1", "1")
	n.ok(alice, &hold, "Freeze", "h2", me.Account, bobMe.Account, "50", itoa(expires))
	var holds []ledger.Hold
	n.ok(bob, &holds, "HoldsOf", bobMe.Account)
	if len(holds) != 2 || holds[0].ID != "h1" || holds[0].Status != ledger.HoldSettled || holds[1].ID != "h2" || holds[1].Status != ledger.HoldOpen {
		t.Fatalf("bob's holds: %+v", holds)
	}
	n.ok(auditor, &holds, "HoldsOf", "Org9MSP::CN=nobody")
	if len(holds) != 0 {
		t.Fatalf("holds of an account without any: %+v", holds)
	}
	n.ok(bob, &hold, "Release", "h2")
	n.rejected(bob, "NOT_FOUND", "Settle", "nope", "1", "1")

	n.ok(alice, &acct, "Balance", me.Account)
	if acct.Balance != 700 {
		t.Fatalf("alice balance %d, want 700", acct.Balance)
	}

	root := strings.Repeat("0f", 32)
	var anchor ledger.Anchor
	n.rejected(admin, `FORBIDDEN: "creator"`, "AnchorBatch", "p0-0-9", root, "10", "0", "9")
	n.ok(operator, &anchor, "AnchorBatch", "p0-0-9", root, "10", "0", "9")
	if n.stub.event != ledger.EventBatchAnchored || anchor.TxID != n.stub.txID {
		t.Fatalf("anchor %+v, event %q", anchor, n.stub.event)
	}
	n.rejected(alice, "FORBIDDEN", "AnchorBatch", "p0-10-19", root, "10", "10", "19")
	n.ok(bob, &anchor, "GetAnchor", "p0-0-9")
	if anchor.MerkleRoot != root {
		t.Fatalf("read back anchor %+v", anchor)
	}

	var model ledger.Model
	n.ok(operator, &model, "RegisterModel", "fraud", "1", root)
	n.ok(bob, &model, "GetModel", "fraud", "0")
	if model.Version != 1 || model.SHA256 != root {
		t.Fatalf("model %+v", model)
	}

	var history []ledger.HistoryEntry
	n.rejected(bob, `FORBIDDEN: "creator"`, "History", ledger.AccountKey(me.Account))
	n.ok(auditor, &history, "History", ledger.AccountKey(me.Account))
	if len(history) != 5 { // mint, freeze h1, refund at settlement, freeze h2, release h2
		t.Fatalf("history of alice's account: %+v", history)
	}
	n.ok(auditor, &history, "History", ledger.HoldKey("never"))
	if len(history) != 0 {
		t.Fatalf("history of an unwritten key: %+v", history)
	}
}

// TestRolesThroughContractAPI pins the wire format the Python client reads:
// the JSON of WhoAmI and of a role record, event names, and refusal texts.
func TestRolesThroughContractAPI(t *testing.T) {
	n := newNetwork(t)
	admin := identity(t, "Org1MSP", "Admin@org1.example.com", "admin")
	org2Admin := identity(t, "Org2MSP", "Admin@org2.example.com", "admin")
	svc := identity(t, "Org1MSP", "inference", "client")
	const svcAccount, shop = "Org1MSP::CN=inference,OU=client", "Org1MSP::CN=shop"

	keys := func(args ...string) map[string]json.RawMessage {
		t.Helper()
		var fields map[string]json.RawMessage
		n.ok(admin, &fields, args...)
		return fields
	}
	sortedKeys := func(m map[string]json.RawMessage) string {
		var names []string
		for k := range m {
			names = append(names, k)
		}
		slices.Sort(names)
		return strings.Join(names, ",")
	}
	who := keys("WhoAmI")
	if got := sortedKeys(who); got != "Account,ActsFor,IsAdmin,MSPID,Roles" || string(who["Roles"]) != "[]" || string(who["IsAdmin"]) != "true" {
		t.Fatalf("WhoAmI JSON: %v", who)
	}
	none := keys("GetRoles", svcAccount)
	if got := sortedKeys(none); got != "account,acts_for,msp_id,roles,tx_id,updated_by" || string(none["roles"]) != "[]" {
		t.Fatalf("role record JSON: %v", none)
	}

	var r ledger.RoleRecord
	n.ok(admin, &r, "GrantRole", svcAccount, ledger.RoleProvider, shop)
	if n.stub.event != ledger.EventRoleGranted || r.ActsFor != shop || r.TxID != n.stub.txID || r.MSPID != "Org1MSP" {
		t.Fatalf("grant: event %q record %+v", n.stub.event, r)
	}
	var ev map[string]any
	if err := json.Unmarshal(n.stub.payload, &ev); err != nil || ev["role"] != ledger.RoleProvider || ev["account"] != svcAccount || ev["acts_for"] != shop {
		t.Fatalf("RoleGranted payload %s", n.stub.payload)
	}
	granted := r.TxID
	n.ok(admin, &r, "GrantRole", svcAccount, ledger.RoleProvider, shop)
	if n.stub.event != "" || r.TxID != granted {
		t.Fatalf("a repeated grant: event %q record %+v", n.stub.event, r)
	}
	var me ledger.Caller
	n.ok(svc, &me, "WhoAmI")
	if me.Account != svcAccount || !slices.Equal(me.Roles, []string{ledger.RoleProvider}) || me.ActsFor != shop {
		t.Fatalf("WhoAmI after the grant %+v", me)
	}

	n.rejected(org2Admin, `FORBIDDEN: "account"`, "GrantRole", svcAccount, ledger.RoleOperator, "")
	n.rejected(svc, `FORBIDDEN: "creator"`, "GrantRole", svcAccount, ledger.RoleOperator, "")
	n.rejected(admin, `INVALID_ARGUMENT: "role"`, "GrantRole", svcAccount, ledger.RoleAdmin, "")
	n.rejected(admin, `INVALID_ARGUMENT: "acts_for"`, "GrantRole", svcAccount, ledger.RoleOperator, shop)
	n.rejected(admin, `INVALID_ARGUMENT: "account"`, "GrantRole", "inference", ledger.RoleOperator, "")
	n.rejected(admin, `CONFLICT: "acts_for"`, "GrantRole", svcAccount, ledger.RoleProvider, "Org1MSP::CN=other")
	n.rejected(org2Admin, `FORBIDDEN: "creator"`, "Mint", "Org2MSP::CN=carol", "10")
	n.rejected(svc, `FORBIDDEN: "creator"`, "Mint", svcAccount, "10")

	n.ok(admin, &r, "RevokeRole", svcAccount, ledger.RoleProvider)
	if n.stub.event != ledger.EventRoleRevoked || len(r.Roles) != 0 || r.ActsFor != "" {
		t.Fatalf("revoke: event %q record %+v", n.stub.event, r)
	}
	n.ok(admin, &r, "RevokeRole", svcAccount, ledger.RoleProvider)
	if n.stub.event != "" {
		t.Fatalf("revoking a role not held emitted %q", n.stub.event)
	}
	n.rejected(svc, `FORBIDDEN: "creator"`, "GetRoles", svcAccount)

	var history []ledger.HistoryEntry
	n.ok(admin, &history, "History", ledger.RoleKey(svcAccount))
	if len(history) != 2 {
		t.Fatalf("history of the grants: %+v", history)
	}
}

func TestMetadataMarksReadsAsEvaluate(t *testing.T) {
	n := newNetwork(t)
	status, payload, msg := n.invoke(identity(t, "Org1MSP", "alice", "client"), "org.hyperledger.fabric:GetMetadata")
	if status != shim.OK {
		t.Fatalf("GetMetadata: %s", msg)
	}
	var meta struct {
		Contracts map[string]struct {
			Transactions []struct {
				Name string   `json:"name"`
				Tags []string `json:"tag"`
			} `json:"transactions"`
		} `json:"contracts"`
	}
	if err := json.Unmarshal(payload, &meta); err != nil {
		t.Fatal(err)
	}
	tags := map[string][]string{}
	for _, tx := range meta.Contracts[Name].Transactions {
		tags[tx.Name] = tx.Tags
	}
	for _, name := range []string{"Mint", "Transfer", "Balance", "Freeze", "Authorize", "Settle", "Release", "AnchorBatch", "GetAnchor", "RegisterModel", "GetModel", "History", "WhoAmI", "GetHold", "HoldsOf", "GrantRole", "RevokeRole", "GetRoles"} {
		if _, ok := tags[name]; !ok {
			t.Errorf("transaction %s missing from the metadata (have %v)", name, tags)
		}
	}
	if _, ok := tags["GetEvaluateTransactions"]; ok {
		t.Error("adapter helper GetEvaluateTransactions leaked into the API")
	}
	if !contains(tags["Balance"], "EVALUATE") || contains(tags["Settle"], "EVALUATE") {
		t.Errorf("Balance tags %v, Settle tags %v", tags["Balance"], tags["Settle"])
	}
	if !contains(tags["GetRoles"], "EVALUATE") || contains(tags["GrantRole"], "EVALUATE") || contains(tags["RevokeRole"], "EVALUATE") {
		t.Errorf("GetRoles tags %v, GrantRole tags %v, RevokeRole tags %v", tags["GetRoles"], tags["GrantRole"], tags["RevokeRole"])
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

func itoa(v int64) string { return big.NewInt(v).String() }
