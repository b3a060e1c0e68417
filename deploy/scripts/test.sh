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
# f.Add seeds); `make fuzz` runs them longer. A target whose inputs are slow
# (FuzzOpen writes files) runs for a count instead of a time: Go reports
# "context deadline exceeded" when the time runs out mid-input.
for target in FuzzDecodeJSON:./adapters/mqtt FuzzParse:./collector/config FuzzOpen:./collector/queue:3000x \
  FuzzRecordDecode:./collector FuzzDecodePayload:./adapters/sparkplug FuzzParsePath:./adapters/opcua \
  FuzzParseContribution:./collector/hub; do
  IFS=: read -r name pkg count <<<"$target"
  step "fuzz $name for ${count:-$FUZZTIME}"
  go test -run '^$' -fuzz "^${name}\$" -fuzztime "${count:-$FUZZTIME}" "$pkg"
done
