#!/bin/bash
# Run once by the influxdb:2 image after its first setup
# (/docker-entrypoint-initdb.d): map the InfluxQL database of the same
# name to the bucket, so Grafana's InfluxQL queries (database "shopfloor",
# retention policy "autogen") reach it. InfluxDB 2.x also has a virtual
# mapping for every bucket; an explicit one survives a bucket rename and
# shows in `influx v1 dbrp list`.
set -euo pipefail
bucket_id=$(influx bucket list --org "${DOCKER_INFLUXDB_INIT_ORG}" --name "${DOCKER_INFLUXDB_INIT_BUCKET}" --hide-headers | cut -f 1)
influx v1 dbrp create --org "${DOCKER_INFLUXDB_INIT_ORG}" --bucket-id "${bucket_id}" \
  --db "${DOCKER_INFLUXDB_INIT_BUCKET}" --rp autogen --default
