package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/noordoostpolder/shopfloor/adapters/opcua"
	"github.com/noordoostpolder/shopfloor/collector/config"
)

// runBrowse walks an OPC UA server's address space, prints the tree and
// writes a ready-to-use config with suggested canonical mappings.
func runBrowse(args []string, stdout, stderr io.Writer) int {
	var o opcua.BrowseOptions
	fs := flag.NewFlagSet("shopfloor browse", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Endpoint, "endpoint", "", "the server's `url`, opc.tcp://host:4840")
	fs.StringVar(&o.SecurityPolicy, "security-policy", "None", "None, Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss")
	fs.StringVar(&o.SecurityMode, "security-mode", "", "Sign or SignAndEncrypt (default by policy)")
	fs.StringVar(&o.AuthMethod, "auth", "", "anonymous, username or certificate (default username when --username is given, else anonymous)")
	fs.StringVar(&o.Username, "username", "", "user for --auth username")
	password := fs.String("password-env", "OPCUA_PASSWORD", "the environment `variable` holding the password (never a flag: it would show in ps)")
	fs.StringVar(&o.CertFile, "cert-file", "", "user certificate for --auth certificate")
	fs.StringVar(&o.KeyFile, "key-file", "", "its key")
	fs.StringVar(&o.DataDir, "data-dir", envOr("SHOPFLOOR_DATA_DIR", DefaultDataDir), "the agent's data `folder`: its certificate and trust list are used, so a server trusted here is trusted by the agent")
	fs.BoolVar(&o.TrustOnFirstUse, "trust", false, "trust the server's certificate if it is not trusted yet (check its fingerprint first)")
	fs.StringVar(&o.StartNode, "start", "", "the node id to start at (default the Objects folder)")
	fs.IntVar(&o.MaxDepth, "depth", 6, "how many levels to walk")
	fs.DurationVar(&o.Timeout, "timeout", 10*time.Second, "bound on connecting and each request")
	out := fs.String("out", "opcua-source.yaml", "write the config snippet to this `file` (- for stdout)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if o.Endpoint == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "shopfloor browse: give --endpoint opc.tcp://host:port")
		fs.Usage()
		return exitUsage
	}
	if o.AuthMethod == "" {
		o.AuthMethod = "anonymous"
		if o.Username != "" {
			o.AuthMethod = "username"
		}
	}
	o.Password = config.Secret(os.Getenv(*password))
	o.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	snippet, err := opcua.Browse(ctx, o, stdout, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "shopfloor browse: %v\n", err)
		return exitFailed
	}
	if *out == "-" {
		_, _ = stdout.Write(snippet)
		return exitOK
	}
	if err := os.WriteFile(*out, snippet, 0o640); err != nil {
		fmt.Fprintf(stderr, "shopfloor browse: %v\n", err)
		return exitFailed
	}
	fmt.Fprintf(stderr, "wrote %s; check it with: shopfloor check --config %s\n", *out, *out)
	return exitOK
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
