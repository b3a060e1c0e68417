#!/usr/bin/env bash
# test.sh: every check `make test` runs, in the environment testenv.sh sets
# up (real Mosquitto and InfluxDB, promtool). Run it through `make test`.
set -euo pipefail
cd "$(dirname "$0")/../.."

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

# Built with !race because the race is inside gopcua's server, not ours;
# see the test's file for the upstream bug.
step "tests of code whose dependency races: without the race detector"
go test -tags integration -count=1 -run '^TestOPCUASecureChannelRenewal$' ./adapters/simulator

# Each fuzz target runs briefly from its seed corpus (testdata/fuzz and the
# f.Add seeds), for a number of inputs worth a few seconds each; `make fuzz`
# runs them longer. Counts, not times: when -fuzztime runs out while the
# fuzzer minimises a new input, Go fails the run with "context deadline
# exceeded", which failed CI runs twice for no fault in the code.
for target in FuzzDecodeJSON:./adapters/mqtt:100000x FuzzParse:./collector/config:30000x \
  FuzzOpen:./collector/queue:3000x FuzzRecordDecode:./collector:150000x \
  FuzzDecodePayload:./adapters/sparkplug:20000x FuzzParsePath:./adapters/opcua:50000x \
  FuzzParseContribution:./collector/hub:100000x FuzzLinesMatchLibrary:./adapters/influxdb:100000x \
  FuzzReadMatchesPaho:./adapters/mqtt:100000x; do
  IFS=: read -r name pkg count <<<"$target"
  step "fuzz $name for $count inputs"
  go test -run '^$' -fuzz "^${name}\$" -fuzztime "$count" "$pkg"
done
