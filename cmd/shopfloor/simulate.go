package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/noordoostpolder/shopfloor/adapters/simulator"
)

// runSimulate serves simulated machines until interrupted.
func runSimulate(args []string, stdout, stderr io.Writer) int {
	var cfg simulator.Config
	fs := flag.NewFlagSet("shopfloor simulate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	mqttURL := fs.String("mqtt", "tcp://127.0.0.1:1883", "publish JSON telemetry to this MQTT broker `url` (empty: no MQTT)")
	clientID := fs.String("client-id", "shopfloor-simulator", "the MQTT client id")
	spNode := fs.String("sparkplug", "", "also publish the machines as devices of a Sparkplug B edge node `group/node` on the --mqtt broker (e.g. demo/sim-edge)")
	opcuaAddr := fs.String("opcua", "", "also serve the machines over OPC UA on this host:`port` (e.g. 127.0.0.1:4840)")
	opcuaDir := fs.String("opcua-dir", "simulator-pki", "`folder` for the OPC UA server's certificate, kept across restarts")
	fs.IntVar(&cfg.CNCs, "cncs", 4, "simulated CNC machines")
	fs.IntVar(&cfg.Robots, "robots", 2, "simulated robots")
	fs.IntVar(&cfg.Lines, "lines", 2, "production lines the machines are spread over")
	fs.Uint64Var(&cfg.Seed, "seed", 1, "the seed: the same seed gives the same machines")
	fs.Float64Var(&cfg.TimeFactor, "time-factor", 1, "run this much faster than real time (60: a shift in 8 minutes)")
	fs.DurationVar(&cfg.Interval, "interval", 0, "simulated time between two samples of a machine (default 1s)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "shopfloor simulate: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	lvl, err := parseLevel(*level)
	if err != nil {
		fmt.Fprintf(stderr, "shopfloor simulate: --log-level: %v\n", err)
		return exitUsage
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	routePahoLogs(logger)
	fleet, err := simulator.NewFleet(cfg, logger)
	if err != nil {
		fmt.Fprintf(stderr, "shopfloor simulate: %v\n", err)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var pubs []simulator.Publisher
	if *mqttURL != "" {
		pub, err := simulator.NewMQTTPublisher(*mqttURL, *clientID, 1)
		if err != nil {
			fmt.Fprintf(stderr, "shopfloor simulate: %v; start a broker or point --mqtt at one\n", err)
			return exitFailed
		}
		defer pub.Close()
		pubs = append(pubs, pub)
		fmt.Fprintf(stdout, "simulating %d machines, publishing to %s on factory/<line>/<machine>/telemetry\n", len(fleet.Machines), *mqttURL)
	}
	if *spNode != "" {
		group, node, ok := strings.Cut(*spNode, "/")
		if !ok || group == "" || node == "" || *mqttURL == "" {
			fmt.Fprintln(stderr, "shopfloor simulate: --sparkplug wants group/node and an --mqtt broker")
			return exitUsage
		}
		edge, err := simulator.NewSparkplugEdgeNode(*mqttURL, group, node, fleet.Machines)
		if err != nil {
			fmt.Fprintf(stderr, "shopfloor simulate: %v\n", err)
			return exitFailed
		}
		defer edge.Close()
		pubs = append(pubs, edge)
		fmt.Fprintf(stdout, "publishing %d machines as Sparkplug B devices of spBv1.0/%s/+/%s\n", len(fleet.Machines), group, node)
	}
	if *opcuaAddr != "" {
		host, portStr, err := net.SplitHostPort(*opcuaAddr)
		port, perr := strconv.Atoi(portStr)
		if err != nil || perr != nil {
			fmt.Fprintf(stderr, "shopfloor simulate: --opcua %q is not host:port\n", *opcuaAddr)
			return exitUsage
		}
		log.SetOutput(io.Discard) // gopcua's server talks to the standard logger
		srv, err := simulator.NewOPCUAServer(ctx, simulator.OPCUAConfig{Host: host, Port: port, Dir: *opcuaDir}, fleet.Machines)
		if err != nil {
			fmt.Fprintf(stderr, "shopfloor simulate: %v\n", err)
			return exitFailed
		}
		defer srv.Close()
		pubs = append(pubs, srv)
		fmt.Fprintf(stdout, "serving %d machines over OPC UA at %s under Objects/Machines/<machine>\n", len(fleet.Machines), srv.Endpoint())
	}
	if len(pubs) == 0 {
		fmt.Fprintln(stderr, "shopfloor simulate: nothing to serve; give --mqtt or --opcua")
		return exitUsage
	}
	if err := fleet.Run(ctx, pubs...); err != nil {
		logger.Error("simulator stopped", "err", err)
		return exitFailed
	}
	return exitOK
}
