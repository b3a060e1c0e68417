#!/usr/bin/env bash
# testenv.sh COMMAND...: install the real services the integration tests talk
# to (Mosquitto, InfluxDB 1.8, promtool), start a shared Mosquitto and
# InfluxDB on free loopback ports, run COMMAND with their addresses and
# binaries in the environment, and stop them afterwards.
#
# Tests that must stop or restart a service start a private one from the
# binary named in SHOPFLOOR_MOSQUITTO / SHOPFLOOR_INFLUXD.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=deploy/scripts/install.sh
. "$here/install.sh"

ensure_apt mosquitto mosquitto mosquitto-clients
ensure_apt promtool prometheus
ensure_influxd

export SHOPFLOOR_MOSQUITTO SHOPFLOOR_INFLUXD SHOPFLOOR_PROMTOOL
SHOPFLOOR_MOSQUITTO=$(find_bin mosquitto)
SHOPFLOOR_PROMTOOL=$(find_bin promtool)
SHOPFLOOR_INFLUXD=$INFLUXD

run=$(mktemp -d "${TMPDIR:-/tmp}/shopfloor-test.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
  shuf -i 20000-60000 -n 1; }

wait_port() { # name port
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "testenv: $1 did not start on port $2; its log:" >&2
  cat "$run/$1.log" >&2 || true
  exit 1
}

mqtt_port=$(free_port)
cat >"$run/mosquitto.conf" <<CONF
listener $mqtt_port 127.0.0.1
allow_anonymous true
max_queued_messages 0
CONF
"$SHOPFLOOR_MOSQUITTO" -c "$run/mosquitto.conf" >"$run/mosquitto.log" 2>&1 &
pids+=($!)
wait_port mosquitto "$mqtt_port"

influx_port=$(free_port)
cat >"$run/influxdb.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:$(free_port)"
[meta]
  dir = "$run/influx/meta"
[data]
  dir = "$run/influx/data"
  wal-dir = "$run/influx/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:$influx_port"
  log-enabled = false
  flux-enabled = true
[monitor]
  store-enabled = false
CONF
"$SHOPFLOOR_INFLUXD" -config "$run/influxdb.conf" >"$run/influxd.log" 2>&1 &
pids+=($!)
wait_port influxd "$influx_port"

export SHOPFLOOR_TEST_MQTT_URL="tcp://127.0.0.1:$mqtt_port"
export SHOPFLOOR_TEST_INFLUX_URL="http://127.0.0.1:$influx_port"
echo "testenv: mosquitto at $SHOPFLOOR_TEST_MQTT_URL, influxd at $SHOPFLOOR_TEST_INFLUX_URL"

"$@"
