// Command shopfloor is the edge agent of the Noordoostpolder manufacturing
// cluster: it reads machine data over MQTT, Sparkplug B and OPC UA,
// normalises it, keeps it in a store-and-forward queue, computes KPIs and
// writes everything to InfluxDB; it also runs the simulator, the demo, the
// load test and the cluster's benchmark hub. Run it without arguments for
// the list of subcommands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"
	// The shift calendar needs IANA time zones; embedding them keeps the
	// agent working on minimal images without the system's tzdata.
	_ "time/tzdata"

	"github.com/noordoostpolder/shopfloor/collector/config"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = "dev"

// Exit codes: 2 is the conventional code for a usage or config error, so
// a service manager can tell "fix the file" from "crashed".
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `shopfloor — machine data collector for the shop floor

Usage:
  shopfloor agent --config FILE   run the agent until SIGTERM or Ctrl-C
  shopfloor check --config FILE   check a config file and print every problem
  shopfloor browse --endpoint URL walk an OPC UA server and write a config snippet
  shopfloor simulate [flags]      simulated CNCs and robots over MQTT and OPC UA
  shopfloor demo [flags]          simulated machines, an MQTT broker, the agent and
                                  InfluxDB on this machine (see make demo)
  shopfloor loadtest [flags]      measure the agent end to end against the set-up's ceilings
  shopfloor hub --config FILE     run the cluster's benchmark hub (deploy/cluster/hub.yaml)
  shopfloor share-id --config FILE
                                  print the firm's pseudonym for cluster sharing
  shopfloor version               print version, commit and Go version

Run 'shopfloor COMMAND -h' for the flags of a command.
`

// run is main without the process exit, so tests can call it.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "agent":
		return runAgent(rest, stdout, stderr)
	case "check":
		return runCheck(rest, stdout, stderr)
	case "demo":
		return runDemo(rest, stdout, stderr)
	case "simulate":
		return runSimulate(rest, stdout, stderr)
	case "browse":
		return runBrowse(rest, stdout, stderr)
	case "loadtest":
		return runLoadtest(rest, stdout, stderr)
	case "hub":
		return runHub(rest, stdout, stderr)
	case "share-id":
		return runShareID(rest, stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintf(stdout, "shopfloor %s\ncommit %s\n%s\n", version, commit(), goVersion())
		return exitOK
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "shopfloor: unknown command %q\n\n%s", cmd, usage)
		return exitUsage
	}
}

// configFlag parses a subcommand's flags, which today are only --config.
// The standard flag package is enough for that; a CLI framework would add
// a dependency for nothing.
func configFlag(name string, args []string, stderr io.Writer) (string, bool) {
	fs := flag.NewFlagSet("shopfloor "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "the YAML config `file` (see deploy/examples/mqtt-json.yaml)")
	if err := fs.Parse(args); err != nil {
		return "", false
	}
	if *path == "" || fs.NArg() > 0 {
		fmt.Fprintf(stderr, "shopfloor %s: give exactly one --config FILE\n", name)
		fs.Usage()
		return "", false
	}
	return *path, true
}

func loadConfig(path string, stderr io.Writer) (Config, bool) {
	var cfg Config
	err := config.Load(path, &cfg, os.LookupEnv)
	if err == nil {
		return cfg, true
	}
	var ps config.Problems
	if errors.As(err, &ps) {
		for _, p := range ps {
			fmt.Fprintln(stderr, p)
		}
		fmt.Fprintf(stderr, "%s: %d problem(s); fix them and run 'shopfloor check --config %s' again\n", path, len(ps), path)
	} else {
		fmt.Fprintf(stderr, "%s: %v\n", path, err)
	}
	return Config{}, false
}

func runCheck(args []string, stdout, stderr io.Writer) int {
	path, ok := configFlag("check", args, stderr)
	if !ok {
		return exitUsage
	}
	cfg, ok := loadConfig(path, stderr)
	if !ok {
		return exitUsage
	}
	fmt.Fprintf(stdout, "%s: ok (%d source(s), InfluxDB %s bucket %s)\n", path, len(cfg.Sources), cfg.Sink.InfluxDB.URL, cfg.Sink.InfluxDB.Bucket)
	return exitOK
}

func runAgent(args []string, _, stderr io.Writer) int {
	path, ok := configFlag("agent", args, stderr)
	if !ok {
		return exitUsage
	}
	cfg, ok := loadConfig(path, stderr)
	if !ok {
		fmt.Fprintln(stderr, "shopfloor agent: not starting with an invalid config")
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	for {
		logger := newLogger(stderr, cfg.Agent.Log)
		routePahoLogs(logger)
		a, err := NewAgent(cfg, logger)
		if err != nil {
			logger.Error("agent cannot start", "err", err)
			return exitFailed
		}
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- a.Run(runCtx) }()
		next, reload := waitForReload(ctx, path, hup, done, logger, stderr)
		cancel()
		if err := <-done; err != nil {
			logger.Error("agent stopped with an error", "err", err)
			return exitFailed
		}
		if !reload {
			logger.Info("agent stopped")
			return exitOK
		}
		// The agent has drained and closed its queue and listener; the
		// new one picks up the queue and the KPI state from disk.
		logger.Info("agent restarting with the reloaded config", "config", path)
		cfg = next
	}
}

// waitForReload returns when the agent should stop: with reload true and
// the new config after a SIGHUP with a valid file, with reload false when
// ctx ends or the agent stopped by itself (its error is left in done). A
// SIGHUP with an invalid file is refused, its problems printed, and the
// agent keeps running with the config it has.
func waitForReload(ctx context.Context, path string, hup <-chan os.Signal, done chan error, logger *slog.Logger, stderr io.Writer) (Config, bool) {
	for {
		select {
		case <-ctx.Done():
			return Config{}, false
		case err := <-done:
			done <- err
			return Config{}, false
		case <-hup:
			logger.Info("SIGHUP: reloading the config", "config", path)
			cfg, ok := loadConfig(path, stderr)
			if !ok {
				logger.Error("reload refused: the config has problems (printed above); the agent keeps running with its current config", "config", path)
				continue
			}
			return cfg, true
		}
	}
}

// commit is the VCS revision the binary was built from, as the Go
// toolchain recorded it.
func commit() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	rev, dirty := "unknown", false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}

func goVersion() string { return runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH }
