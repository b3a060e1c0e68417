// Command gen writes the JSON of every shopfloor dashboard into a folder,
// where Grafana's file provisioning reads it. Run it through
// `go generate ./dashboards/...`; the golden test fails until the
// committed JSON matches the Go code again.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/noordoostpolder/shopfloor/dashboards"
)

func main() {
	out := flag.String("out", "json", "the `folder` to write the dashboards' JSON to")
	flag.Parse()
	if err := generate(*out); err != nil {
		fmt.Fprintf(os.Stderr, "dashboards/gen: %v\n", err)
		os.Exit(1)
	}
}

func generate(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	want := map[string]bool{}
	for _, g := range dashboards.All() {
		b, err := dashboards.Render(g.Build)
		if err != nil {
			return fmt.Errorf("%s: %w", g.File, err)
		}
		if err := os.WriteFile(filepath.Join(dir, g.File), b, 0o644); err != nil {
			return err
		}
		want[g.File] = true
	}
	// A dashboard removed from the code must leave Grafana too, so stale
	// JSON files are deleted rather than left to be provisioned.
	old, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return err
	}
	for _, f := range old {
		if base := filepath.Base(f); !want[base] && strings.HasPrefix(base, "shopfloor-") {
			if err := os.Remove(f); err != nil {
				return err
			}
		}
	}
	return nil
}
