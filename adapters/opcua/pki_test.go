package opcua

import (
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPKITrustList(t *testing.T) {
	dir := t.TempDir()
	logs := &logRecorder{}
	p := newPKI(dir, logs.logger())
	own, _, err := p.ApplicationCertificate("urn:shopfloor:test")
	if err != nil {
		t.Fatal(err)
	}
	// OPC UA (Part 6, 6.2.2): the ApplicationUri is in the SubjectAltName.
	if c, err := x509.ParseCertificate(own); err != nil || !hasURI(c, "urn:shopfloor:test") {
		t.Errorf("application certificate lacks its ApplicationUri in the SubjectAltName (%v)", err)
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
	// The log line tells the operator the command that trusts it.
	if n := logs.count("mv " + rejected[0] + " " + filepath.Join(dir, "opcua", "trusted")); n != 1 {
		t.Errorf("%d log lines say how to trust %s, want one:\n%s", n, rejected[0], logs.String())
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

// TestLoadKeyPairMismatch: a key that belongs to another certificate is
// refused when the files are read, naming both, instead of as a
// signature the server cannot verify.
func TestLoadKeyPairMismatch(t *testing.T) {
	dir := t.TempDir()
	a := newPKI(filepath.Join(dir, "a"), testLogger())
	b := newPKI(filepath.Join(dir, "b"), testLogger())
	for _, p := range []*PKI{a, b} {
		if _, _, err := p.ApplicationCertificate("urn:shopfloor:test"); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := loadKeyPair(a.CertPath(), a.KeyPath()); err != nil {
		t.Errorf("matching pair: %v", err)
	}
	_, _, err := loadUserCert(a.CertPath(), b.KeyPath())
	if err == nil || !strings.Contains(err.Error(), "is not the private key of") ||
		!strings.Contains(err.Error(), a.CertPath()) || !strings.Contains(err.Error(), b.KeyPath()) {
		t.Errorf("mismatched pair: %v, want an error naming both files", err)
	}
}
