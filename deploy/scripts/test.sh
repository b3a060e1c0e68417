#!/usr/bin/env bash
# test.sh: every check `make test` runs, in the environment testenv.sh sets
# up (real Mosquitto and InfluxDB, promtool). Run it through `make test`.
set -euo pipefail
cd "$(dirname "$0")/../.."

FUZZTIME=${FUZZTIME:-8s}
step() { printf '\n== %s\n' "$*"; }

step "gofmt"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
  echo "these files need gofmt -w:"; echo "$unformatted"; exit 1
fi

step "go vet (unit and integration builds)"
go vet ./...
go vet -tags integration ./...

step "unit and integration tests, with the race detector"
go test -race -tags integration -count=1 -timeout 15m ./...

# Each fuzz target runs briefly from its seed corpus (testdata/fuzz and the
# f.Add seeds); `make fuzz` runs them longer.
for target in FuzzDecodeJSON:./adapters/mqtt FuzzParse:./collector/config FuzzOpen:./collector/queue FuzzRecordDecode:./collector FuzzDecodePayload:./adapters/sparkplug FuzzParsePath:./adapters/opcua FuzzParseContribution:./collector/hub; do
  step "fuzz ${target%%:*} for $FUZZTIME"
  go test -run '^$' -fuzz "^${target%%:*}\$" -fuzztime "$FUZZTIME" "${target#*:}"
done
