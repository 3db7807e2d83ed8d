// Command chaincode runs the StreamLedger contract as a chaincode service
// ("chaincode as a service"): the peer connects to it, instead of building and
// launching it. Configuration comes from the environment:
//
//	CHAINCODE_SERVER_ADDRESS   listen address, e.g. 127.0.0.1:9999 (required)
//	CORE_CHAINCODE_ID_NAME     package id from `peer lifecycle chaincode install` (required)
//	CHAINCODE_TLS_CERT_FILE, CHAINCODE_TLS_KEY_FILE   server TLS key pair (PEM)
//	CHAINCODE_TLS_CLIENT_CA_FILE   when set, the peer must present a cert from this CA
//	CHAINCODE_TLS_DISABLED=true    plain gRPC, for local experiments only
//	STREAMLEDGER_ADMIN_OU, STREAMLEDGER_ROLE_ATTRIBUTE   how a certificate shows an admin
//	STREAMLEDGER_MINT_MSPID    whose admins may mint (default Org1MSP; the old STREAMLEDGER_ADMIN_MSPID is read if unset)
//	STREAMLEDGER_MIN_SETTLEMENT_WINDOW_SECONDS   least settlement window after a hold's expiry
//	                           (default 1800; must exceed the peers' peer.authentication.timewindow)
//
// Every organisation's chaincode server must get the same STREAMLEDGER_ values,
// or their endorsements differ.
package main

import (
	"fmt"
	"log"
	"os"

	"github.com/hyperledger/fabric-chaincode-go/v2/shim"

	"github.com/streamledger/streamledger/chaincode/contract"
	"github.com/streamledger/streamledger/chaincode/ledger"
)

func main() {
	server, err := serverFromEnv(os.LookupEnv, os.ReadFile)
	if err != nil {
		log.Fatalf("streamledger chaincode: %v", err)
	}
	log.Printf("streamledger chaincode %s listening on %s (tls=%t)", server.CCID, server.Address, !server.TLSProps.Disabled)
	if err := server.Start(); err != nil {
		log.Fatalf("streamledger chaincode: serving on %s: %v", server.Address, err)
	}
}

// serverFromEnv builds the chaincode server from the environment; it is
// separate from main so its errors can be tested.
func serverFromEnv(lookup func(string) (string, bool), readFile func(string) ([]byte, error)) (*shim.ChaincodeServer, error) {
	address, _ := lookup("CHAINCODE_SERVER_ADDRESS")
	if address == "" {
		return nil, fmt.Errorf("CHAINCODE_SERVER_ADDRESS is not set (e.g. 127.0.0.1:9999)")
	}
	ccid, _ := lookup("CORE_CHAINCODE_ID_NAME")
	if ccid == "" {
		return nil, fmt.Errorf("CORE_CHAINCODE_ID_NAME is not set (the package id printed by `peer lifecycle chaincode install`)")
	}
	tlsProps, err := tlsFromEnv(lookup, readFile)
	if err != nil {
		return nil, err
	}
	settings, err := ledger.SettingsFromEnv(lookup)
	if err != nil {
		return nil, err
	}
	cc, err := contract.NewChaincode(settings)
	if err != nil {
		return nil, err
	}
	return &shim.ChaincodeServer{CCID: ccid, Address: address, CC: cc, TLSProps: tlsProps}, nil
}

// tlsFromEnv insists on a choice: either a key pair or an explicit opt-out,
// so a forgotten variable never silently serves plaintext.
func tlsFromEnv(lookup func(string) (string, bool), readFile func(string) ([]byte, error)) (shim.TLSProperties, error) {
	if v, _ := lookup("CHAINCODE_TLS_DISABLED"); v == "true" {
		return shim.TLSProperties{Disabled: true}, nil
	}
	certFile, _ := lookup("CHAINCODE_TLS_CERT_FILE")
	keyFile, _ := lookup("CHAINCODE_TLS_KEY_FILE")
	if certFile == "" || keyFile == "" {
		return shim.TLSProperties{}, fmt.Errorf("set CHAINCODE_TLS_CERT_FILE and CHAINCODE_TLS_KEY_FILE, or CHAINCODE_TLS_DISABLED=true")
	}
	props := shim.TLSProperties{}
	var err error
	if props.Cert, err = readFile(certFile); err != nil {
		return props, fmt.Errorf("CHAINCODE_TLS_CERT_FILE: %w", err)
	}
	if props.Key, err = readFile(keyFile); err != nil {
		return props, fmt.Errorf("CHAINCODE_TLS_KEY_FILE: %w", err)
	}
	if caFile, _ := lookup("CHAINCODE_TLS_CLIENT_CA_FILE"); caFile != "" {
		if props.ClientCACerts, err = readFile(caFile); err != nil {
			return props, fmt.Errorf("CHAINCODE_TLS_CLIENT_CA_FILE: %w", err)
		}
	}
	return props, nil
}
