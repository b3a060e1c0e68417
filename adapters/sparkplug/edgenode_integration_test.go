//go:build integration

package sparkplug

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// EnvNode names the node binary; deploy/scripts/testenv.sh sets it.
const EnvNode = "SHOPFLOOR_NODE"

// edgeNode is testdata/edgenode/edgenode.js: an edge node built on npm
// sparkplug-payload and mqtt, driven one command at a time.
type edgeNode struct {
	t       *testing.T
	stdin   io.WriteCloser
	replies chan map[string]any
	mu      sync.Mutex
	events  []map[string]any
}

func startEdgeNode(t *testing.T) *edgeNode {
	t.Helper()
	bin := os.Getenv(EnvNode)
	if bin == "" {
		t.Fatalf("%s is not set; run the integration tests through deploy/scripts/testenv.sh", EnvNode)
	}
	dir, err := filepath.Abs("testdata/edgenode")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "sparkplug-payload")); err != nil {
		t.Fatalf("npm packages missing in %s (%v); deploy/scripts/testenv.sh installs them", dir, err)
	}
	cmd := exec.Command(bin, "edgenode.js")
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	e := &edgeNode{t: t, stdin: stdin, replies: make(chan map[string]any, 16)}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				t.Errorf("edge node printed %q", sc.Text())
				continue
			}
			if _, ok := m["event"]; ok {
				e.mu.Lock()
				e.events = append(e.events, m)
				e.mu.Unlock()
				continue
			}
			e.replies <- m
		}
		close(e.replies)
	}()
	t.Cleanup(func() {
		_ = stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	return e
}

// do sends one command and waits for its answer.
func (e *edgeNode) do(cmd map[string]any) map[string]any {
	e.t.Helper()
	b, _ := json.Marshal(cmd)
	if _, err := e.stdin.Write(append(b, '\n')); err != nil {
		e.t.Fatalf("edge node: %v", err)
	}
	select {
	case r, ok := <-e.replies:
		if !ok {
			e.t.Fatal("edge node exited")
		}
		if r["ok"] != true {
			e.t.Fatalf("edge node %s: %v", cmd["cmd"], r["error"])
		}
		return r
	case <-time.After(15 * time.Second):
		e.t.Fatalf("edge node did not answer %s", cmd["cmd"])
		return nil
	}
}

// rebirthRequests counts the NCMD Node Control/Rebirth the edge node got
// from the broker.
func (e *edgeNode) rebirthRequests() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, ev := range e.events {
		if ev["event"] == "error" {
			e.t.Errorf("edge node: %v", ev["error"])
		}
		if ev["event"] != "ncmd" {
			continue
		}
		ms, _ := ev["metrics"].([]any)
		for _, m := range ms {
			if mm, _ := m.(map[string]any); mm["name"] == "Node Control/Rebirth" && mm["value"] == true {
				n++
			}
		}
	}
	return n
}

type m = map[string]any

func newHost(t *testing.T, cfg Config) *Source {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := New(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// stateWatcher records the retained STATE of a host.
type stateWatcher struct {
	mu     sync.Mutex
	states []hostState
}

func watchState(t *testing.T, url, hostID string) *stateWatcher {
	t.Helper()
	w := &stateWatcher{}
	c := collectortest.Publisher(t, url)
	tok := c.Subscribe(Namespace+"/STATE/"+hostID, 1, func(_ paho.Client, msg paho.Message) {
		var st hostState
		if err := json.Unmarshal(msg.Payload(), &st); err != nil {
			t.Errorf("STATE payload %q: %v", msg.Payload(), err)
			return
		}
		if !msg.Retained() && msg.Qos() != 1 {
			t.Errorf("STATE published with QoS %d", msg.Qos())
		}
		w.mu.Lock()
		w.states = append(w.states, st)
		w.mu.Unlock()
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe STATE: %v", tok.Error())
	}
	return w
}

func (w *stateWatcher) last() (hostState, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.states) == 0 {
		return hostState{}, false
	}
	return w.states[len(w.states)-1], true
}

// retainedState reads the broker's retained STATE with a fresh client.
func retainedState(t *testing.T, url, hostID string) hostState {
	t.Helper()
	got := make(chan hostState, 4)
	c := collectortest.Publisher(t, url)
	tok := c.Subscribe(Namespace+"/STATE/"+hostID, 1, func(_ paho.Client, msg paho.Message) {
		var st hostState
		if msg.Retained() && json.Unmarshal(msg.Payload(), &st) == nil {
			got <- st
		}
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe STATE: %v", tok.Error())
	}
	select {
	case st := <-got:
		return st
	case <-time.After(10 * time.Second):
		t.Fatal("no retained STATE")
		return hostState{}
	}
}

// waitValues waits until signal at origin has at least n values.
func waitValues(t *testing.T, out *collectortest.Output, orig, signal string, n int) []collector.Value {
	t.Helper()
	var got []collector.Value
	collectortest.Eventually(t, 15*time.Second, func() error {
		got = values(out, orig, signal)
		if len(got) < n {
			return fmt.Errorf("%s %s: %d values %v, want %d", orig, signal, len(got), got, n)
		}
		return nil
	})
	return got
}
