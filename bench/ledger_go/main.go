// Command ledger-go submits Mint transactions through the official Fabric Gateway Go client
// (github.com/hyperledger/fabric-gateway), the peer of StreamLedger's Python gateway client
// in bench/ledger_tx.py: the same contract call, identity, peer and concurrency, so the two
// clients' committed transactions per second compare in one run.
//
// It prints one JSON object: {"committed", "seconds", "p50_ms", "p99_ms", "failed"}, where
// seconds is the measured wall time of all submits and every committed submit waited for its
// commit status (SubmitTransaction = endorse, submit, wait for commit).
package main

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/hyperledger/fabric-gateway/pkg/client"
	"github.com/hyperledger/fabric-gateway/pkg/hash"
	"github.com/hyperledger/fabric-gateway/pkg/identity"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

type result struct {
	Committed int     `json:"committed"`
	Seconds   float64 `json:"seconds"`
	P50Ms     float64 `json:"p50_ms"`
	P99Ms     float64 `json:"p99_ms"`
	Failed    int     `json:"failed"`
	FirstErr  string  `json:"first_error,omitempty"`
}

func main() {
	peer := flag.String("peer", "127.0.0.1:7051", "the gateway peer's address")
	serverName := flag.String("server-name", "", "the name checked in the peer's TLS certificate")
	tlsRoot := flag.String("tls-root", "", "the peer's TLS CA certificate (PEM)")
	mspID := flag.String("msp-id", "Org1MSP", "the MSP id of the identity")
	mspDir := flag.String("msp-dir", "", "the identity's MSP folder (signcerts/, keystore/)")
	channel := flag.String("channel", "streamledger", "the channel")
	chaincode := flag.String("chaincode", "streamledger", "the chaincode")
	concurrency := flag.Int("concurrency", 16, "concurrent submitters")
	total := flag.Int("total", 100, "submits in all")
	prefix := flag.String("prefix", "bench-go", "account prefix: each submitter mints into its own account")
	flag.Parse()

	contract, closeAll, err := connect(*peer, *serverName, *tlsRoot, *mspID, *mspDir, *channel, *chaincode)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ledger-go:", err)
		os.Exit(2)
	}
	defer closeAll()

	var mu sync.Mutex
	var latencies []float64
	out := result{}
	var wg sync.WaitGroup
	started := time.Now()
	for t := 0; t < *concurrency; t++ {
		wg.Add(1)
		go func(t int) {
			defer wg.Done()
			account := fmt.Sprintf("%s-%d", *prefix, t)
			for n := t; n < *total; n += *concurrency {
				began := time.Now()
				_, err := contract.SubmitTransaction("Mint", account, "1")
				took := time.Since(began).Seconds() * 1000
				mu.Lock()
				if err != nil {
					out.Failed++
					if out.FirstErr == "" {
						out.FirstErr = err.Error()
					}
				} else {
					out.Committed++
					latencies = append(latencies, took)
				}
				mu.Unlock()
			}
		}(t)
	}
	wg.Wait()
	out.Seconds = time.Since(started).Seconds()
	sort.Float64s(latencies)
	if len(latencies) > 0 {
		out.P50Ms = latencies[len(latencies)/2]
		out.P99Ms = latencies[min(len(latencies)-1, len(latencies)*99/100)]
	}
	encoded, _ := json.Marshal(out)
	fmt.Println(string(encoded))
	if out.Failed > 0 {
		os.Exit(1)
	}
}

func connect(peer, serverName, tlsRoot, mspID, mspDir, channel, chaincode string) (*client.Contract, func(), error) {
	rootPEM, err := os.ReadFile(tlsRoot)
	if err != nil {
		return nil, nil, fmt.Errorf("peer TLS root: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		return nil, nil, fmt.Errorf("peer TLS root %s holds no certificate", tlsRoot)
	}
	conn, err := grpc.NewClient(peer, grpc.WithTransportCredentials(credentials.NewClientTLSFromCert(roots, serverName)))
	if err != nil {
		return nil, nil, fmt.Errorf("gRPC connection to %s: %w", peer, err)
	}
	certPEM, err := onlyFile(filepath.Join(mspDir, "signcerts"))
	if err != nil {
		return nil, nil, err
	}
	cert, err := identity.CertificateFromPEM(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("signing certificate: %w", err)
	}
	id, err := identity.NewX509Identity(mspID, cert)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := onlyFile(filepath.Join(mspDir, "keystore"))
	if err != nil {
		return nil, nil, err
	}
	key, err := identity.PrivateKeyFromPEM(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("signing key: %w", err)
	}
	sign, err := identity.NewPrivateKeySign(key)
	if err != nil {
		return nil, nil, err
	}
	gw, err := client.Connect(id, client.WithSign(sign), client.WithHash(hash.SHA256), client.WithClientConnection(conn),
		client.WithEndorseTimeout(30*time.Second), client.WithSubmitTimeout(30*time.Second),
		client.WithCommitStatusTimeout(60*time.Second))
	if err != nil {
		return nil, nil, err
	}
	closeAll := func() { gw.Close(); conn.Close() }
	return gw.GetNetwork(channel).GetContract(chaincode), closeAll, nil
}

// onlyFile reads the one file a signcerts/ or keystore/ folder holds.
func onlyFile(folder string) ([]byte, error) {
	entries, err := os.ReadDir(folder)
	if err != nil {
		return nil, err
	}
	if len(entries) != 1 {
		return nil, errors.New(folder + " must hold exactly one file, it holds " + strconv.Itoa(len(entries)))
	}
	return os.ReadFile(filepath.Join(folder, entries[0].Name()))
}
