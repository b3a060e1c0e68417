#!/usr/bin/env bash
# testenv.sh COMMAND...: install the real services the integration tests talk
# to (Mosquitto, InfluxDB 1.8, promtool) and run COMMAND with their binaries
# named in SHOPFLOOR_MOSQUITTO, SHOPFLOOR_INFLUXD and SHOPFLOOR_PROMTOOL.
#
# Every integration test starts its own Mosquitto and InfluxDB on free
# loopback ports (collectortest.Mosquitto, collectortest.Influx) and stops
# them when it ends: tests that kill or restart a service, or count
# points, must not share one, and a private one leaves nothing running.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=deploy/scripts/install.sh
. "$here/install.sh"

ensure_apt mosquitto mosquitto mosquitto-clients
ensure_apt promtool prometheus
ensure_influxd
ensure_npm_deps "$here/../.."
ensure_apt chromium chromium

export SHOPFLOOR_MOSQUITTO SHOPFLOOR_INFLUXD SHOPFLOOR_PROMTOOL SHOPFLOOR_NODE SHOPFLOOR_CHROMIUM
SHOPFLOOR_CHROMIUM=$(find_bin chromium)
SHOPFLOOR_NODE=$(find_bin node)
SHOPFLOOR_MOSQUITTO=$(find_bin mosquitto)
SHOPFLOOR_PROMTOOL=$(find_bin promtool)
SHOPFLOOR_INFLUXD=$INFLUXD

echo "testenv: mosquitto $SHOPFLOOR_MOSQUITTO, influxd $SHOPFLOOR_INFLUXD, promtool $SHOPFLOOR_PROMTOOL"

"$@"
