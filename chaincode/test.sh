#!/bin/sh
# Vet, format-check and unit-test the StreamLedger chaincode (no peer needed).
set -eu
cd "$(dirname "$0")"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
    echo "gofmt: these files need formatting: $unformatted" >&2
    exit 1
fi
go vet ./...
go test ./...
