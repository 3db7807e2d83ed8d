package contract

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
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
	creator, _ := identityWithKey(t, mspID, cn, ou)
	return creator
}

// identityWithKey also returns the identity's private key, to sign receipts.
func identityWithKey(t *testing.T, mspID, cn, ou string) ([]byte, *ecdsa.PrivateKey) {
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
	return raw, key
}

// signReceipt signs a receipt the way the Python client does: SHA-256 of the
// canonical bytes, ECDSA, ASN.1 DER, standard base64.
func signReceipt(t *testing.T, key *ecdsa.PrivateKey, holdID string, units, sequence int64) string {
	t.Helper()
	msg := "streamledger-receipt/v1\n" + holdID + "\n" + itoa(units) + "\n" + itoa(sequence)
	digest := sha256.Sum256([]byte(msg))
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(sig)
}

type network struct {
	t     *testing.T
	cc    *contractapi.ContractChaincode
	stub  *fakeStub
	txNum int
}

func newNetwork(t *testing.T) *network {
	cc, err := NewChaincode(ledger.DefaultSettings)
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
	alice, aliceKey := identityWithKey(t, "Org1MSP", "alice", "client")
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
	n.ok(alice, &hold, "Freeze", "order-1", bobMe.Account, "400", "10", itoa(expires), "0")
	if n.stub.event != ledger.EventHoldFrozen || hold.Status != ledger.HoldOpen || hold.ID != ledger.HoldID(me.Account, "order-1") || hold.PricePerUnit != 10 {
		t.Fatalf("freeze: event %q hold %+v", n.stub.event, hold)
	}
	// The hold records the very certificate that froze it.
	var sid msp.SerializedIdentity
	if err := proto.Unmarshal(alice, &sid); err != nil || hold.ClientCert != string(sid.IdBytes) {
		t.Fatalf("client_cert %q, want the creator's PEM", hold.ClientCert)
	}
	h1 := hold.ID
	n.ok(bob, &hold, "Authorize", h1, "100")
	n.ok(bob, &hold, "Authorize", h1, "200")
	n.ok(bob, &hold, "RecordReceipt", h1, "10", "1", signReceipt(t, aliceKey, h1, 10, 1))
	if n.stub.event != ledger.EventReceiptRecorded || hold.Receipt == nil || hold.Receipt.Units != 10 || hold.Authorized != 300 {
		t.Fatalf("record: event %q hold %+v", n.stub.event, hold)
	}
	n.rejected(bob, `STALE_RECEIPT: "sequence"`, "Settle", h1, "9", "1", signReceipt(t, aliceKey, h1, 9, 1))
	n.rejected(bob, `INVALID_RECEIPT: "signature"`, "Settle", h1, "31", "2", signReceipt(t, aliceKey, h1, 30, 2))
	var s ledger.Settlement
	n.ok(bob, &s, "Settle", h1, "30", "2", signReceipt(t, aliceKey, h1, 30, 2))
	if s.Charged != 300 || s.Refunded != 100 || s.Units != 30 || s.Receipt.Sequence != 2 || n.stub.event != ledger.EventHoldSettled {
		t.Fatalf("settlement %+v, event %q", s, n.stub.event)
	}
	n.rejected(bob, `ALREADY_SETTLED: "hold_id"`, "Settle", h1, "0", "0", "")
	n.ok(alice, &hold, "Freeze", "order-2", bobMe.Account, "50", "5", itoa(expires), "0")
	h2 := hold.ID
	n.rejected(alice, `WINDOW_OPEN: "hold_id"`, "Release", h2)
	n.rejected(alice, `CONFLICT: "nonce"`, "Freeze", "order-2", bobMe.Account, "50", "6", itoa(expires), "0")
	var holds []ledger.Hold
	n.ok(bob, &holds, "HoldsOf", bobMe.Account)
	if len(holds) != 2 {
		t.Fatalf("bob's holds: %+v", holds)
	}
	for _, got := range holds {
		if (got.ID == h1 && got.Status != ledger.HoldSettled) || (got.ID == h2 && got.Status != ledger.HoldOpen) || (got.ID != h1 && got.ID != h2) {
			t.Fatalf("bob's holds: %+v", holds)
		}
	}
	n.ok(auditor, &holds, "HoldsOf", "Org9MSP::CN=nobody")
	if len(holds) != 0 {
		t.Fatalf("holds of an account without any: %+v", holds)
	}
	n.ok(bob, &hold, "Release", h2)
	n.rejected(bob, "NOT_FOUND", "Settle", "nope", "0", "0", "")

	n.ok(alice, &acct, "Balance", me.Account)
	if acct.Balance != 700 {
		t.Fatalf("alice balance %d, want 700", acct.Balance)
	}

	root := strings.Repeat("0f", 32)
	var anchor ledger.Anchor
	n.rejected(admin, `FORBIDDEN: "creator"`, "AnchorBatch", "events.clean:0:0-9", root, "10", "0", "9")
	n.rejected(operator, `INVALID_ARGUMENT: "batch_id"`, "AnchorBatch", "p0-0-9", root, "10", "0", "9")
	n.ok(operator, &anchor, "AnchorBatch", "events.clean:0:0-9", root, "10", "0", "9")
	if n.stub.event != ledger.EventBatchAnchored || anchor.TxID != n.stub.txID {
		t.Fatalf("anchor %+v, event %q", anchor, n.stub.event)
	}
	n.rejected(alice, "FORBIDDEN", "AnchorBatch", "events.clean:0:10-19", root, "10", "10", "19")
	n.ok(bob, &anchor, "GetAnchor", "events.clean:0:0-9")
	if anchor.MerkleRoot != root {
		t.Fatalf("read back anchor %+v", anchor)
	}
	var topic ledger.Topic
	n.ok(bob, &topic, "GetTopic", "events.clean")
	if topic.Owner != "Org1MSP::CN=anchoring,OU=client" {
		t.Fatalf("topic %+v", topic)
	}

	var model ledger.Model
	n.rejected(operator, `CONFLICT: "version"`, "RegisterModel", "fraud", "2", root)
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
	for _, name := range []string{"Mint", "Transfer", "Balance", "Freeze", "Authorize", "RecordReceipt", "Settle", "Release", "AnchorBatch", "GetAnchor", "GetTopic", "RegisterModel", "GetModel", "History", "WhoAmI", "GetHold", "HoldsOf", "GrantRole", "RevokeRole", "GetRoles"} {
		if _, ok := tags[name]; !ok {
			t.Errorf("transaction %s missing from the metadata (have %v)", name, tags)
		}
	}
	if _, ok := tags["GetEvaluateTransactions"]; ok {
		t.Error("adapter helper GetEvaluateTransactions leaked into the API")
	}
	if !contains(tags["Balance"], "EVALUATE") || !contains(tags["GetTopic"], "EVALUATE") || contains(tags["Settle"], "EVALUATE") || contains(tags["RecordReceipt"], "EVALUATE") {
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

// TestHoldWireFormat pins the JSON of a hold, a receipt, a settlement and a
// topic, and the event names: what the Python inference, settlement and
// client code read.
func TestHoldWireFormat(t *testing.T) {
	n := newNetwork(t)
	admin := identity(t, "Org1MSP", "Admin@org1.example.com", "admin")
	client, key := identityWithKey(t, "Org2MSP", "User1@org2.example.com", "client")
	org2Admin := identity(t, "Org2MSP", "Admin@org2.example.com", "admin")
	settlement := identity(t, "Org1MSP", "settlement", "client")
	const clientAccount, provider = "Org2MSP::CN=User1@org2.example.com,OU=client", "Org1MSP::CN=provider,OU=client"
	n.ok(org2Admin, nil, "GrantRole", clientAccount, ledger.RoleClient, "")
	n.ok(admin, nil, "GrantRole", "Org1MSP::CN=settlement,OU=client", ledger.RoleProvider, provider)
	n.ok(admin, nil, "Mint", clientAccount, "1000")

	keysOf := func(raw []byte) string {
		t.Helper()
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(raw, &fields); err != nil {
			t.Fatalf("decoding %s: %v", raw, err)
		}
		var names []string
		for k := range fields {
			names = append(names, k)
		}
		slices.Sort(names)
		return strings.Join(names, ",")
	}
	submit := func(creator []byte, args ...string) []byte {
		t.Helper()
		status, payload, msg := n.invoke(creator, args...)
		if status != shim.OK {
			t.Fatalf("%v: %s", args, msg)
		}
		return payload
	}
	const holdKeys = "amount,authorized,charged,client,client_cert,close_tx_id,closed_at,created_at,expires_at,freeze_tx_id,hold_id,nonce,price_per_unit,provider,receipt,refunded,settle_by,settlement_window_seconds,status"
	expires := n.stub.now.Unix() + 600
	raw := submit(client, "Freeze", "9d3c", provider, "1000", "7", itoa(expires), "3600")
	if got := keysOf(raw); got != holdKeys || n.stub.event != ledger.EventHoldFrozen {
		t.Fatalf("Hold JSON keys %s (event %q)", got, n.stub.event)
	}
	var hold map[string]any
	_ = json.Unmarshal(raw, &hold)
	if hold["receipt"] != nil || hold["settle_by"] != float64(expires+3600) || hold["status"] != "OPEN" {
		t.Fatalf("fresh hold %s", raw)
	}
	id := hold["hold_id"].(string)
	submit(settlement, "Authorize", id, "700")
	raw = submit(settlement, "RecordReceipt", id, "50", "3", signReceipt(t, key, id, 50, 3))
	const receiptKeys = "hold_id,recorded_at,sequence,signature,tx_id,units"
	if got := keysOf(n.stub.payload); got != receiptKeys || n.stub.event != ledger.EventReceiptRecorded {
		t.Fatalf("ReceiptRecorded payload keys %s (event %q)", got, n.stub.event)
	}
	var withReceipt struct {
		Receipt json.RawMessage `json:"receipt"`
	}
	_ = json.Unmarshal(raw, &withReceipt)
	if got := keysOf(withReceipt.Receipt); got != receiptKeys {
		t.Fatalf("a hold's receipt keys %s", got)
	}
	raw = submit(settlement, "Settle", id, "0", "0", "")
	const settlementKeys = "authorized,charged,client,hold_id,price_per_unit,provider,receipt,refunded,tx_id,units"
	if got := keysOf(raw); got != settlementKeys || n.stub.event != ledger.EventHoldSettled || keysOf(n.stub.payload) != settlementKeys {
		t.Fatalf("Settlement JSON keys %s (event %q)", got, n.stub.event)
	}
	var s ledger.Settlement
	_ = json.Unmarshal(raw, &s)
	if s.Units != 50 || s.Charged != 350 || s.Refunded != 650 || s.Receipt == nil || s.Receipt.Sequence != 3 {
		t.Fatalf("settlement %+v", s)
	}

	operator := identity(t, "Org1MSP", "anchoring", "client")
	n.ok(admin, nil, "GrantRole", "Org1MSP::CN=anchoring,OU=client", ledger.RoleOperator, "")
	submit(operator, "AnchorBatch", "events.clean:3:0-0", strings.Repeat("ab", 32), "1", "0", "0")
	if got := keysOf(submit(operator, "GetTopic", "events.clean")); got != "bound_at,owner,topic,tx_id" {
		t.Fatalf("Topic JSON keys %s", got)
	}
}
