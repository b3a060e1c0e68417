//go:build integration

package collectortest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestServiceMovesOffATakenPort: when another server holds the port
// FreePort gave (another test process bound it first), the service
// must not mistake that server for its own but start on another port.
func TestServiceMovesOffATakenPort(t *testing.T) {
	other := Mosquitto(t)
	s := newMosquitto(t)
	configure, attempts := s.configure, 0
	s.configure = func(port int) {
		attempts++
		if attempts == 1 {
			port = other.Port
			s.Port = port
		}
		configure(port)
	}
	s.begin()
	t.Cleanup(s.Stop)
	if attempts < 2 {
		t.Fatalf("started after %d attempt(s) on port %d, the port another broker holds", attempts, s.Port)
	}
	if s.Port == other.Port {
		t.Fatalf("service reports the taken port %d", s.Port)
	}
	log, err := os.ReadFile(filepath.Join(s.dir, "mosquitto.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "Address already in use") {
		t.Errorf("log does not show the failed bind:\n%s", log)
	}
	if err := tcpReady(s.Port); err != nil {
		t.Errorf("broker on its new port %d: %v", s.Port, err)
	}
	s.Restart()
	if err := tcpReady(s.Port); err != nil {
		t.Errorf("after restart: %v", err)
	}
}
