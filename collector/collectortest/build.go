package collectortest

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
)

// BuildBinary builds the Go command in pkgDir (a path relative to the
// calling test's package) into dir and returns the binary's path, so that
// tests run the program a user runs, signals and exit codes included.
func BuildBinary(pkgDir, dir string) (string, error) {
	abs, err := filepath.Abs(pkgDir)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, filepath.Base(abs))
	if out, err := exec.Command("go", "build", "-o", bin, pkgDir).CombinedOutput(); err != nil {
		return "", fmt.Errorf("build %s: %v\n%s", pkgDir, err, out)
	}
	return bin, nil
}

// Build is BuildBinary for one test, into its temporary folder.
func Build(t testing.TB, pkgDir string) string {
	t.Helper()
	bin, err := BuildBinary(pkgDir, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return bin
}
