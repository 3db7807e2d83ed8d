package main

import (
	"errors"
	"strings"
	"testing"
)

func env(values map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := values[k]; return v, ok }
}

func files(values map[string]string) func(string) ([]byte, error) {
	return func(name string) ([]byte, error) {
		if v, ok := values[name]; ok {
			return []byte(v), nil
		}
		return nil, errors.New("no such file")
	}
}

func TestServerFromEnvNamesWhatIsMissing(t *testing.T) {
	base := map[string]string{"CHAINCODE_SERVER_ADDRESS": "127.0.0.1:9999", "CORE_CHAINCODE_ID_NAME": "streamledger_1:abc"}
	cases := []struct {
		name string
		drop string
		add  map[string]string
		want string
	}{
		{"no address", "CHAINCODE_SERVER_ADDRESS", nil, "CHAINCODE_SERVER_ADDRESS"},
		{"no package id", "CORE_CHAINCODE_ID_NAME", nil, "CORE_CHAINCODE_ID_NAME"},
		{"no TLS choice", "", nil, "CHAINCODE_TLS_CERT_FILE"},
		{"unreadable cert", "", map[string]string{"CHAINCODE_TLS_CERT_FILE": "/missing", "CHAINCODE_TLS_KEY_FILE": "/k"}, "CHAINCODE_TLS_CERT_FILE"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			vars := map[string]string{}
			for k, v := range base {
				if k != c.drop {
					vars[k] = v
				}
			}
			for k, v := range c.add {
				vars[k] = v
			}
			_, err := serverFromEnv(env(vars), files(nil))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want an error naming %s, got %v", c.want, err)
			}
		})
	}
}

func TestServerFromEnv(t *testing.T) {
	vars := map[string]string{
		"CHAINCODE_SERVER_ADDRESS": "127.0.0.1:9999", "CORE_CHAINCODE_ID_NAME": "streamledger_1:abc",
		"CHAINCODE_TLS_CERT_FILE": "/c", "CHAINCODE_TLS_KEY_FILE": "/k", "CHAINCODE_TLS_CLIENT_CA_FILE": "/ca",
	}
	s, err := serverFromEnv(env(vars), files(map[string]string{"/c": "CERT", "/k": "KEY", "/ca": "CA"}))
	if err != nil {
		t.Fatal(err)
	}
	if s.CCID != "streamledger_1:abc" || s.Address != "127.0.0.1:9999" || s.TLSProps.Disabled ||
		string(s.TLSProps.Cert) != "CERT" || string(s.TLSProps.Key) != "KEY" || string(s.TLSProps.ClientCACerts) != "CA" || s.CC == nil {
		t.Fatalf("server %+v", s)
	}
	vars = map[string]string{"CHAINCODE_SERVER_ADDRESS": "127.0.0.1:9999", "CORE_CHAINCODE_ID_NAME": "x", "CHAINCODE_TLS_DISABLED": "true"}
	if s, err = serverFromEnv(env(vars), files(nil)); err != nil || !s.TLSProps.Disabled {
		t.Fatalf("TLS opt-out: %+v %v", s, err)
	}
}

func TestServerFromEnvRefusesABadSettlementWindow(t *testing.T) {
	vars := map[string]string{"CHAINCODE_SERVER_ADDRESS": "127.0.0.1:9999", "CORE_CHAINCODE_ID_NAME": "x", "CHAINCODE_TLS_DISABLED": "true",
		"STREAMLEDGER_MIN_SETTLEMENT_WINDOW_SECONDS": "soon"}
	if _, err := serverFromEnv(env(vars), files(nil)); err == nil || !strings.Contains(err.Error(), "STREAMLEDGER_MIN_SETTLEMENT_WINDOW_SECONDS") {
		t.Fatalf("want an error naming the variable, got %v", err)
	}
	vars["STREAMLEDGER_MIN_SETTLEMENT_WINDOW_SECONDS"] = "20"
	if _, err := serverFromEnv(env(vars), files(nil)); err != nil {
		t.Fatal(err)
	}
}
