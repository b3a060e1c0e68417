#!/usr/bin/env bash
# demo.sh: what `make demo` runs. Installs influxd 1.8.10 into the cache on
# first use (with progress), builds shopfloor, and runs `shopfloor demo`:
# an embedded MQTT broker, simulated machines, InfluxDB and the agent, with
# everything they write in .demo/ at the top of the checkout.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=deploy/scripts/install.sh
. "$root/deploy/scripts/install.sh"

ensure_influxd
echo "demo: building shopfloor..." >&2
(cd "$root" && go build -o bin/shopfloor ./cmd/shopfloor)
exec "$root/bin/shopfloor" demo --influxd "$INFLUXD" --dir "$root/.demo" "$@"
