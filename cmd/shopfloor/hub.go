package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/noordoostpolder/shopfloor/collector/config"
	"github.com/noordoostpolder/shopfloor/collector/hub"
	"github.com/noordoostpolder/shopfloor/collector/share"
)

// HubFileConfig is the configuration file of `shopfloor hub`; see
// deploy/cluster/hub.yaml.
type HubFileConfig struct {
	Hub hub.Config `yaml:"hub"`
	Log LogConfig  `yaml:"log"`
}

// SetDefaults fills unset values.
func (c *HubFileConfig) SetDefaults() {
	c.Hub.SetDefaults()
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
}

// Validate reports every problem at once.
func (c HubFileConfig) Validate() error {
	var errs []error
	errs = append(errs, config.Nest("hub", c.Hub.Validate()))
	if _, err := parseLevel(c.Log.Level); err != nil {
		errs = append(errs, config.Invalid("log.level", "%v", err))
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		errs = append(errs, config.Invalid("log.format", "%q is not a log format; use text or json", c.Log.Format))
	}
	return errors.Join(errs...)
}

// runHub runs the cluster's aggregator until SIGTERM or Ctrl-C.
func runHub(args []string, _, stderr io.Writer) int {
	path, ok := configFlag("hub", args, stderr)
	if !ok {
		return exitUsage
	}
	var cfg HubFileConfig
	if err := loadHubConfig(path, &cfg); err != nil {
		printProblems(path, err, stderr)
		fmt.Fprintln(stderr, "shopfloor hub: not starting with an invalid config")
		return exitUsage
	}
	logger := newLogger(stderr, cfg.Log)
	routePahoLogs(logger)
	h, err := hub.New(cfg.Hub, logger.With("component", "hub"))
	if err != nil {
		logger.Error("hub cannot start", "err", err)
		return exitFailed
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	logger.Info("hub started", "broker", cfg.Hub.Broker.URL, "influxdb", cfg.Hub.InfluxDB.URL, "k", cfg.Hub.K)
	if err := h.Run(ctx); err != nil {
		logger.Error("hub stopped with an error", "err", err)
		return exitFailed
	}
	logger.Info("hub stopped")
	return exitOK
}

func loadHubConfig(path string, cfg *HubFileConfig) error {
	return config.Load(path, cfg, os.LookupEnv)
}

// runShareID prints the firm's pseudonym, creating the firm secret in the
// agent's data directory when there is none, so the cluster coordinator
// can create the firm's broker user under that name.
func runShareID(args []string, stdout, stderr io.Writer) int {
	path, ok := configFlag("share-id", args, stderr)
	if !ok {
		return exitUsage
	}
	cfg, ok := loadConfig(path, stderr)
	if !ok {
		return exitUsage
	}
	id, err := share.PseudonymOf(cfg.Agent.DataDir)
	if err != nil {
		fmt.Fprintf(stderr, "shopfloor share-id: %v\n", err)
		return exitFailed
	}
	fmt.Fprintln(stdout, id)
	return exitOK
}

// printProblems prints a config error the way loadConfig does.
func printProblems(path string, err error, stderr io.Writer) {
	var ps config.Problems
	if errors.As(err, &ps) {
		for _, p := range ps {
			fmt.Fprintln(stderr, p)
		}
		fmt.Fprintf(stderr, "%s: %d problem(s)\n", path, len(ps))
		return
	}
	fmt.Fprintf(stderr, "%s: %v\n", path, err)
}
