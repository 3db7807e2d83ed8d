package contract

import (
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
