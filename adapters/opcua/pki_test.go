package opcua

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestPKITrustList(t *testing.T) {
	dir := t.TempDir()
	p := newPKI(dir, testLogger())
	own, _, err := p.ApplicationCertificate("urn:shopfloor:test")
	if err != nil {
		t.Fatal(err)
	}
	serverA, _, _ := generateCert("urn:server:a")
	serverA2, _, _ := generateCert("urn:server:a") // the same server, a new certificate
	serverB, _, _ := generateCert("urn:server:b")

	// Unknown: refused, saved to rejected/ with a hint.
	err = p.CheckServer(serverA, "opc.tcp://a:4840", false)
	if !errors.Is(err, ErrUntrusted) {
		t.Fatalf("unknown cert: %v, want ErrUntrusted", err)
	}
	rejected, _ := filepath.Glob(filepath.Join(dir, "opcua", "rejected", "*.der"))
	if len(rejected) != 1 {
		t.Fatalf("rejected/ = %v", rejected)
	}
	// Trusted by the operator moving it.
	if err := os.Rename(rejected[0], filepath.Join(dir, "opcua", "trusted", filepath.Base(rejected[0]))); err != nil {
		t.Fatal(err)
	}
	if err := p.CheckServer(serverA, "opc.tcp://a:4840", false); err != nil {
		t.Errorf("trusted cert refused: %v", err)
	}
	// Trust on first use: a new application is trusted, a changed
	// certificate of a known application is not.
	if err := p.CheckServer(serverB, "opc.tcp://b:4840", true); err != nil {
		t.Errorf("TOFU refused a new server: %v", err)
	}
	if err := p.CheckServer(serverB, "opc.tcp://b:4840", false); err != nil {
		t.Errorf("TOFU-trusted cert refused later: %v", err)
	}
	if err := p.CheckServer(serverA2, "opc.tcp://a:4840", true); !errors.Is(err, ErrUntrusted) {
		t.Errorf("TOFU accepted a changed certificate of a known server: %v", err)
	}
	// The application certificate stays the same.
	again, _, err := p.ApplicationCertificate("urn:shopfloor:test")
	if err != nil || string(again) != string(own) {
		t.Errorf("application certificate regenerated: %v", err)
	}
}
