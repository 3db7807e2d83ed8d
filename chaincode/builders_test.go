package main

// These tests drive the chaincode-as-a-service packaging (deploy/fabric) the
// way a peer would: package, then the external builder's detect, build and
// release steps, checking what the peer would read at the end.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const deployDir = "../deploy/fabric"

func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

func builder(step string) string { return filepath.Join(deployDir, "builders/ccaas/bin", step) }

func writePEMCert(t *testing.T, path string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "chaincode-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// unpack extracts a chaincode package the way the peer lays it out for builders.
func unpack(t *testing.T, pkg string) (src, meta string) {
	t.Helper()
	dir := t.TempDir()
	meta, src = filepath.Join(dir, "meta"), filepath.Join(dir, "src")
	for _, d := range []string{meta, src} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := run(t, "tar", "-xzf", pkg, "-C", meta); err != nil {
		t.Fatalf("untar package: %v %s", err, out)
	}
	if out, err := run(t, "tar", "-xzf", filepath.Join(meta, "code.tar.gz"), "-C", src); err != nil {
		t.Fatalf("untar code: %v %s", err, out)
	}
	return src, meta
}

func TestCCaaSPackageThroughBuilder(t *testing.T) {
	if _, err := exec.LookPath("jq"); err != nil {
		t.Fatal("jq is required by the ccaas builder scripts (deploy/system-deps.sh installs it)")
	}
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	writePEMCert(t, ca)
	pkg := filepath.Join(dir, "streamledger.tar.gz")
	out, err := run(t, filepath.Join(deployDir, "package-ccaas.sh"), pkg, "--label", "streamledger_2", "--address", "127.0.0.1:9444", "--root-cert", ca)
	if err != nil {
		t.Fatalf("package: %v %s", err, out)
	}
	packageID := strings.TrimSpace(out)
	if !strings.HasPrefix(packageID, "streamledger_2:") || len(packageID) != len("streamledger_2:")+64 {
		t.Fatalf("package id %q", packageID)
	}
	again := filepath.Join(dir, "again.tar.gz")
	if out, _ := run(t, filepath.Join(deployDir, "package-ccaas.sh"), again, "--label", "streamledger_2", "--address", "127.0.0.1:9444", "--root-cert", ca); strings.TrimSpace(out) != packageID {
		t.Fatalf("packaging is not reproducible: %q then %q", packageID, out)
	}

	src, meta := unpack(t, pkg)
	if out, err := run(t, builder("detect"), src, meta); err != nil {
		t.Fatalf("detect refused a ccaas package: %v %s", err, out)
	}
	buildOut, releaseOut := filepath.Join(dir, "build"), filepath.Join(dir, "release")
	if out, err := run(t, builder("build"), src, meta, buildOut); err != nil {
		t.Fatalf("build: %v %s", err, out)
	}
	if out, err := run(t, builder("release"), buildOut, releaseOut); err != nil {
		t.Fatalf("release: %v %s", err, out)
	}
	raw, err := os.ReadFile(filepath.Join(releaseOut, "chaincode/server/connection.json"))
	if err != nil {
		t.Fatalf("the peer reads chaincode/server/connection.json: %v", err)
	}
	var conn struct {
		Address     string `json:"address"`
		DialTimeout string `json:"dial_timeout"`
		TLSRequired bool   `json:"tls_required"`
		RootCert    string `json:"root_cert"`
	}
	if err := json.Unmarshal(raw, &conn); err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(ca)
	if conn.Address != "127.0.0.1:9444" || !conn.TLSRequired || conn.DialTimeout != "10s" ||
		strings.TrimSpace(conn.RootCert) != strings.TrimSpace(string(caPEM)) {
		t.Fatalf("released connection.json: %s", raw)
	}
}

func TestCCaaSBuilderRejectsWhatItCannotServe(t *testing.T) {
	dir := t.TempDir()
	src, meta := filepath.Join(dir, "src"), filepath.Join(dir, "meta")
	for _, d := range []string{src, meta} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	write := func(path, body string) {
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	write(filepath.Join(meta, "metadata.json"), `{"type":"golang","label":"x"}`)
	if _, err := run(t, builder("detect"), src, meta); err == nil {
		t.Error("detect claimed a golang package")
	}
	write(filepath.Join(meta, "metadata.json"), `not json`)
	if _, err := run(t, builder("detect"), src, meta); err == nil {
		t.Error("detect claimed a package with unreadable metadata")
	}
	write(filepath.Join(meta, "metadata.json"), `{"type":"CCAAS","label":"x"}`)
	if out, err := run(t, builder("detect"), src, meta); err != nil {
		t.Errorf("detect should accept type CCAAS in any case: %v %s", err, out)
	}

	cases := []struct{ body, want string }{
		{``, "no connection.json"},
		{`[1]`, "not a JSON object"},
		{`{"address":"nohost","tls_required":false}`, "address: must be"},
		{`{"address":"h:1","dial_timeout":"soon","tls_required":false}`, "dial_timeout"},
		{`{"address":"h:1","tls_required":true,"root_cert":""}`, "root_cert: a PEM certificate is required"},
		{`{"address":"h:1","tls_required":false,"client_auth_required":true}`, "client_cert"},
	}
	for _, c := range cases {
		conn := filepath.Join(src, "connection.json")
		os.Remove(conn)
		if c.body != "" {
			write(conn, c.body)
		}
		out, err := run(t, builder("build"), src, meta, filepath.Join(dir, "out"))
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("build with connection.json %q: want failure naming %q, got %v %q", c.body, c.want, err, out)
		}
	}
	if out, err := run(t, builder("release"), filepath.Join(dir, "nothing"), filepath.Join(dir, "rel")); err == nil || !strings.Contains(out, "did build run") {
		t.Errorf("release without build output: %v %q", err, out)
	}
	if out, err := run(t, filepath.Join(deployDir, "package-ccaas.sh"), filepath.Join(dir, "p.tgz")); err == nil || !strings.Contains(out, "--root-cert is required") {
		t.Errorf("packaging without TLS material: %v %q", err, out)
	}
}
