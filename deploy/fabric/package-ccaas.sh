#!/bin/sh
# Package the StreamLedger contract for "chaincode as a service": a Fabric
# chaincode package (metadata.json + code.tar.gz holding connection.json) that
# the ccaas builder in builders/ccaas turns into "connect to ADDRESS".
#
#   package-ccaas.sh OUT.tar.gz [--label L] [--address HOST:PORT]
#                    [--root-cert PEM] [--client-cert PEM --client-key PEM] [--no-tls]
#
# --root-cert is the CA of the chaincode server's TLS certificate; client
# cert/key are what the peer presents when the server asks for client auth.
# The archive is byte-for-byte reproducible, so the same inputs give the same
# package id; it prints the package id (label:sha256) that the chaincode server
# needs as CORE_CHAINCODE_ID_NAME.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "package-ccaas: $*" >&2; exit 2; }

out="${1:-}"
[ -n "$out" ] && [ "${out#-}" = "$out" ] || die "usage: package-ccaas.sh OUT.tar.gz [--label L] [--address HOST:PORT] [--root-cert F] [--client-cert F --client-key F] [--no-tls]"
shift
label="streamledger_1.0" address="127.0.0.1:9999" root_cert="" client_cert="" client_key="" tls=true
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || [ "$1" = "--no-tls" ] || die "$1 needs a value"
    case "$1" in
        --label) label="$2"; shift 2 ;;
        --address) address="$2"; shift 2 ;;
        --root-cert) root_cert="$2"; shift 2 ;;
        --client-cert) client_cert="$2"; shift 2 ;;
        --client-key) client_key="$2"; shift 2 ;;
        --no-tls) tls=false; shift ;;
        *) die "unknown option $1" ;;
    esac
done
# Fabric accepts labels of letters, digits, '.', '+', '-' and '_'.
echo "$label" | grep -Eq '^[[:alnum:]][[:alnum:]_.+-]*$' || die "--label: must be letters, digits, '_', '.', '+' or '-', got '$label'"
if [ "$tls" = true ] && [ -z "$root_cert" ]; then die "--root-cert is required unless --no-tls"; fi
if [ -n "$client_cert" ] || [ -n "$client_key" ]; then
    [ -n "$client_cert" ] && [ -n "$client_key" ] || die "--client-cert and --client-key go together"
fi
for f in "$root_cert" "$client_cert" "$client_key"; do
    [ -z "$f" ] || [ -r "$f" ] || die "cannot read $f"
done
pem() { if [ -n "$1" ]; then cat "$1"; fi; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/code"
jq --arg address "$address" --argjson tls "$tls" \
   --arg root "$(pem "$root_cert")" --arg cert "$(pem "$client_cert")" --arg key "$(pem "$client_key")" \
   '.address = $address | .tls_required = $tls | .root_cert = $root
    | .client_auth_required = ($cert != "") | .client_cert = $cert | .client_key = $key' \
   "$here/chaincode-package/connection.json" > "$work/code/connection.json"
jq --arg name "$label" '.label = $name' "$here/chaincode-package/metadata.json" > "$work/metadata.json"

# Reproducible archives: fixed order, times and owners, no gzip timestamp.
repro_tar() { tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$1" -cf - "$2" | gzip -n; }
repro_tar "$work/code" connection.json > "$work/code.tar.gz"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work" -cf - metadata.json code.tar.gz | gzip -n > "$out"
echo "$label:$(sha256sum "$out" | cut -d' ' -f1)"
