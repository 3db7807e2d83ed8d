#!/usr/bin/env bash
# Debian packages the stack and its tests use that a fresh machine may lack:
# kcat (an outside Kafka client for the tests), maven (fetches the Kafka jars),
# jq (the Fabric chaincode-as-a-service builder scripts in deploy/fabric),
# chromium (the dashboard's browser tests drive it headless).
# Java 17, Go and Python come with the machine. Installs only what is missing.
set -euo pipefail
need=()
command -v kcat >/dev/null || need+=(kcat)
command -v mvn >/dev/null || need+=(maven)
command -v jq >/dev/null || need+=(jq)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing Debian packages: ${need[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
