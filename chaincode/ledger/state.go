package ledger

import (
	"encoding/json"
	"time"
)

// State is the slice of the Fabric world state the rules need. The contract
// adapts the chaincode stub to it; unit tests use a map.
type State interface {
	// Get returns nil, nil when the key does not exist.
	Get(key string) ([]byte, error)
	Put(key string, value []byte) error
	// History lists every committed write of key, oldest first.
	History(key string) ([]HistoryEntry, error)
	// Emit sets the transaction's chaincode event. Fabric keeps one event per
	// transaction, so every rule emits at most one.
	Emit(name string, payload []byte) error
	// IndexAdd records that record id belongs to owner in index (a Fabric
	// composite key), so IndexList(index, owner) can find it without a scan.
	IndexAdd(index, owner, id string) error
	// IndexList returns the ids recorded under owner, in key order.
	IndexList(index, owner string) ([]string, error)
}

// HistoryEntry is one committed write of a key.
type HistoryEntry struct {
	TxID      string `json:"tx_id"`
	Timestamp string `json:"timestamp"`
	IsDelete  bool   `json:"is_delete"`
	Value     string `json:"value"`
}

// Key prefixes: one namespace per record type, so History(key) can check that
// a key names something this contract owns.
const (
	accountPrefix = "account:"
	holdPrefix    = "hold:"
	anchorPrefix  = "anchor:"
	modelPrefix   = "model:"
	latestPrefix  = "model-latest:"
	rolePrefix    = "role:"
	topicPrefix   = "topic:"
	// holdsByAccount indexes every hold under its client and its provider.
	holdsByAccount = "holdOf"
)

func AccountKey(id string) string { return accountPrefix + id }
func HoldKey(id string) string    { return holdPrefix + id }
func AnchorKey(id string) string  { return anchorPrefix + id }
func ModelKey(id string, version int64) string {
	return modelPrefix + id + "@" + itoa(version)
}
func latestModelKey(id string) string { return latestPrefix + id }
func RoleKey(account string) string   { return rolePrefix + account }
func TopicKey(topic string) string    { return topicPrefix + topic }

// Ledger applies the contract's rules for one transaction: who calls, when
// (the transaction timestamp, identical on every endorser), and its tx id.
type Ledger struct {
	state       State
	settings    Settings
	caller      Caller
	certificate []byte // the caller's X.509 certificate (DER), recorded in the holds it freezes
	now         time.Time
	txID        string
}

// New binds the rules to one transaction by identity id: it classifies the
// certificate and reads the roles granted to its account, once.
func New(state State, settings Settings, id IdentityFacts, now time.Time, txID string) (*Ledger, error) {
	caller, err := settings.Classify(id)
	if err != nil {
		return nil, err
	}
	l := &Ledger{state: state, settings: settings, certificate: id.Certificate, now: now.UTC(), txID: txID}
	grants, err := l.roleRecord(caller.Account, caller.MSPID)
	if err != nil {
		return nil, err
	}
	caller.Roles, caller.ActsFor = grants.Roles, grants.ActsFor
	l.caller = caller
	return l, nil
}

// load decodes key into out; it reports false when the key does not exist.
func (l *Ledger) load(key string, out any) (bool, error) {
	raw, err := l.state.Get(key)
	if err != nil {
		return false, &StateError{Op: "get", Key: key, Err: err}
	}
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return false, &StateError{Op: "decode", Key: key, Err: err}
	}
	return true, nil
}

func (l *Ledger) store(key string, value any) error {
	raw, err := json.Marshal(value)
	if err != nil {
		return &StateError{Op: "encode", Key: key, Err: err}
	}
	if err := l.state.Put(key, raw); err != nil {
		return &StateError{Op: "put", Key: key, Err: err}
	}
	return nil
}

func (l *Ledger) emit(name string, payload any) error {
	raw, err := json.Marshal(payload)
	if err != nil {
		return &StateError{Op: "encode event", Key: name, Err: err}
	}
	if err := l.state.Emit(name, raw); err != nil {
		return &StateError{Op: "emit", Key: name, Err: err}
	}
	return nil
}

func (l *Ledger) timestamp() string { return l.now.Format(time.RFC3339Nano) }
