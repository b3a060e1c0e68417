# shopfloor: the two commands a newcomer needs are `make demo` and
# `make test`; the rest is for developers.

GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
FUZZTIME ?= 2m

.PHONY: all build test demo loadtest dashboards bench fuzz lint clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/shopfloor ./cmd/shopfloor

# Installs what is missing (mosquitto, promtool, influxd 1.8.10 into
# ~/.cache/shopfloor), starts the services on free loopback ports, runs
# gofmt, vet, every test and short fuzz runs, and stops the services.
test:
	bash deploy/scripts/testenv.sh bash deploy/scripts/test.sh

# Simulated machines, an embedded MQTT broker, InfluxDB 1.8 (installed into
# ~/.cache/shopfloor on first use) and the agent, until Ctrl-C. Everything
# the demo writes is in .demo/. DEMO_FLAGS passes flags to shopfloor demo.
demo:
	bash deploy/scripts/demo.sh $(DEMO_FLAGS)

# End-to-end load test against the set-up's ceilings; LOADTEST_FLAGS passes
# flags to shopfloor loadtest (see README.md, Performance).
loadtest: build
	bash deploy/scripts/testenv.sh ./bin/shopfloor loadtest $(LOADTEST_FLAGS)

# Regenerate the Grafana dashboards' JSON from their Go code.
dashboards:
	$(GO) generate ./dashboards/...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeJSON$$' -fuzztime $(FUZZTIME) ./adapters/mqtt
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./collector/config
	$(GO) test -run '^$$' -fuzz '^FuzzOpen$$' -fuzztime $(FUZZTIME) ./collector/queue
	$(GO) test -run '^$$' -fuzz '^FuzzRecordDecode$$' -fuzztime $(FUZZTIME) ./collector
	$(GO) test -run '^$$' -fuzz '^FuzzDecodePayload$$' -fuzztime $(FUZZTIME) ./adapters/sparkplug
	$(GO) test -run '^$$' -fuzz '^FuzzParsePath$$' -fuzztime $(FUZZTIME) ./adapters/opcua
	$(GO) test -run '^$$' -fuzz '^FuzzParseContribution$$' -fuzztime $(FUZZTIME) ./collector/hub
	$(GO) test -run '^$$' -fuzz '^FuzzLinesMatchLibrary$$' -fuzztime $(FUZZTIME) ./adapters/influxdb
	$(GO) test -run '^$$' -fuzz '^FuzzReadMatchesPaho$$' -fuzztime $(FUZZTIME) ./adapters/mqtt

lint:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags integration ./...

clean:
	rm -rf bin
