package collectortest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// EnvNode is set by deploy/scripts/testenv.sh to the node binary.
const EnvNode = "SHOPFLOOR_NODE"

// NodeOPCUA starts the node-opcua test server, server.js in dir (a path
// relative to the calling test's package, adapters/opcua/testdata/nodeserver
// from the repository root), with extra arguments (see the header of
// server.js) on a free port, and returns its endpoint. The server is
// stopped when the test ends.
func NodeOPCUA(t testing.TB, dir string, extra ...string) string {
	t.Helper()
	node := os.Getenv(EnvNode)
	if node == "" {
		t.Fatalf("%s is not set: run integration tests through deploy/scripts/testenv.sh, which installs node and node-opcua", EnvNode)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "node-opcua")); err != nil {
		t.Fatalf("node-opcua is not installed in %s (%v): run deploy/scripts/testenv.sh, which runs npm ci there", dir, err)
	}
	// The port is free when FreePort returns but another test process
	// may take it before node binds it; then try again on another.
	for attempt := 1; ; attempt++ {
		port := FreePort(t)
		args := append([]string{filepath.Join(dir, "server.js"), "--port", fmt.Sprint(port), "--pki", t.TempDir()}, extra...)
		stderr, err := runNodeServer(t, node, dir, args)
		if err == nil {
			return fmt.Sprintf("opc.tcp://127.0.0.1:%d", port)
		}
		if attempt < 5 && strings.Contains(stderr, "EADDRINUSE") {
			continue
		}
		t.Fatalf("node-opcua server: %v\n%s", err, stderr)
	}
}

// runNodeServer starts node with args and waits for its READY line. On
// failure the process is gone and its stderr is returned whole: the
// buffer is read only after Wait, when nothing writes to it any more.
func runNodeServer(t testing.TB, node, dir string, args []string) (string, error) {
	t.Helper()
	cmd := exec.Command(node, args...)
	cmd.Dir = dir
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start node-opcua server: %v", err)
	}
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "READY ") {
				ready <- nil
				break
			}
		}
		ready <- errors.New("server exited before READY")
		for sc.Scan() {
		}
	}()
	select {
	case err = <-ready:
	case <-time.After(60 * time.Second):
		err = errors.New("not ready within 60s")
	}
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return stderr.String(), err
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return "", nil
}
