package contract

import (
	"fmt"
	"time"

	"github.com/hyperledger/fabric-chaincode-go/v2/shim"

	"github.com/streamledger/streamledger/chaincode/ledger"
)

// stubState adapts the chaincode stub to ledger.State.
type stubState struct {
	stub shim.ChaincodeStubInterface
}

func (s stubState) Get(key string) ([]byte, error)     { return s.stub.GetState(key) }
func (s stubState) Put(key string, value []byte) error { return s.stub.PutState(key, value) }
func (s stubState) Emit(name string, payload []byte) error {
	return s.stub.SetEvent(name, payload)
}

// IndexAdd writes a composite key; its value is a placeholder, since Fabric
// does not store a key with an empty value.
func (s stubState) IndexAdd(index, owner, id string) error {
	key, err := s.stub.CreateCompositeKey(index, []string{owner, id})
	if err != nil {
		return err
	}
	return s.stub.PutState(key, []byte{0})
}

func (s stubState) IndexList(index, owner string) ([]string, error) {
	it, err := s.stub.GetStateByPartialCompositeKey(index, []string{owner})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var ids []string
	for it.HasNext() {
		kv, err := it.Next()
		if err != nil {
			return nil, err
		}
		_, attrs, err := s.stub.SplitCompositeKey(kv.GetKey())
		if err != nil {
			return nil, err
		}
		if len(attrs) != 2 {
			return nil, fmt.Errorf("index key %q has %d attributes, want 2", kv.GetKey(), len(attrs))
		}
		ids = append(ids, attrs[1])
	}
	return ids, nil
}

func (s stubState) History(key string) ([]ledger.HistoryEntry, error) {
	it, err := s.stub.GetHistoryForKey(key)
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var entries []ledger.HistoryEntry
	for it.HasNext() {
		m, err := it.Next()
		if err != nil {
			return nil, err
		}
		entries = append(entries, ledger.HistoryEntry{
			TxID:      m.GetTxId(),
			Timestamp: m.GetTimestamp().AsTime().UTC().Format(time.RFC3339Nano),
			IsDelete:  m.GetIsDelete(),
			Value:     string(m.GetValue()),
		})
	}
	return entries, nil
}
