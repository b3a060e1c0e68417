//go:build integration

package opcua

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/noordoostpolder/shopfloor/collector"
	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// writeUserCert writes a user certificate as DER and its key as a
// PKCS #8 PEM file, the other encodings loadKeyPair reads besides the
// application certificate's PEM and PKCS #1, and returns their paths.
func writeUserCert(t *testing.T, uri string) (certFile, keyFile string) {
	t.Helper()
	der, key, err := generateCert(uri)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "user.der"), filepath.Join(dir, "user.key")
	if err := os.WriteFile(certFile, der, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestInteropNodeOPCUACertificateLogin logs in to node-opcua with an
// X509 user identity token, over Basic256Sha256 in both Sign and
// SignAndEncrypt mode: once with the application certificate (auth
// method certificate without cert_file) and once with a user
// certificate from cert_file/key_file. The server's user trust list
// holds exactly these two, so the login is checked, not waved through:
// values arrive and keep changing. A user certificate the server does
// not trust is refused with BadIdentityTokenRejected and an error that
// names the certificate and says where to trust it, not one about a
// password.
func TestInteropNodeOPCUACertificateLogin(t *testing.T) {
	t.Parallel()
	const appURI = "urn:shopfloor:test:certlogin"
	appDir := t.TempDir()
	// The application certificate exists before the server starts, so
	// that the server can be told to trust it as a user.
	if _, _, err := newPKI(appDir, testLogger()).ApplicationCertificate(appURI); err != nil {
		t.Fatal(err)
	}
	appCert := filepath.Join(appDir, "opcua", "own", "cert.pem")
	userCert, userKey := writeUserCert(t, "urn:shopfloor:test:operator")
	strangerCert, strangerKey := writeUserCert(t, "urn:shopfloor:test:stranger")
	endpoint := startNodeServer(t, "--policy", PolicyBasic256Sha256, "--modes", "Sign,SignAndEncrypt",
		"--certlogin", appCert+","+userCert)

	config := func(mode string, auth Auth) Config {
		return Config{
			Endpoint:           endpoint,
			SecurityPolicy:     PolicyBasic256Sha256,
			SecurityMode:       mode,
			Auth:               auth,
			ApplicationURI:     appURI,
			TrustOnFirstUse:    true,
			PublishingInterval: 100 * time.Millisecond,
			Nodes:              []Node{{Path: "Objects/Machines/cnc-01/SpindleSpeed"}},
		}
	}
	for _, login := range []struct {
		name string
		auth Auth
	}{
		{"ApplicationCertificate", Auth{Method: AuthCertificate}},
		{"UserCertificateFile", Auth{Method: AuthCertificate, CertFile: userCert, KeyFile: userKey}},
	} {
		for _, mode := range []string{SecurityModeSign, SecurityModeSignAndEncrypt} {
			t.Run(login.name+"/"+mode, func(t *testing.T) {
				t.Parallel()
				// Each its own copy of the agent's data directory: the
				// same application certificate, a trust list of its own.
				s := newTestSource(t, config(mode, login.auth), copyOwn(t, appDir))
				out := &collectortest.Output{}
				stop := supervise(t, s, out)
				defer stop()
				speed := waitFor(t, out, "Objects/Machines/cnc-01|SpindleSpeed", nil)
				waitFor(t, out, "Objects/Machines/cnc-01|SpindleSpeed", func(s collector.Sample) bool { return s.Value != speed.Value })
			})
		}
	}

	t.Run("UntrustedUserCertificate", func(t *testing.T) {
		t.Parallel()
		s := newTestSource(t, config(SecurityModeSignAndEncrypt, Auth{Method: AuthCertificate, CertFile: strangerCert, KeyFile: strangerKey}), copyOwn(t, appDir))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out := &collectortest.Output{}
		err := s.Run(ctx, out)
		if !errors.Is(err, ua.StatusBadIdentityTokenRejected) {
			t.Fatalf("Run with an untrusted user certificate = %v, want BadIdentityTokenRejected", err)
		}
		t.Logf("refused as it should be: %v", err)
		stranger, _, _ := loadKeyPair(strangerCert, strangerKey)
		for _, want := range []string{"user certificate", strangerCert, Thumbprint(stranger), "trust"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
		if strings.Contains(err.Error(), "password") {
			t.Errorf("error %q points at a password; the login was by certificate", err)
		}
		if len(out.Batches()) != 0 {
			t.Errorf("a refused login emitted %d batches", len(out.Batches()))
		}
	})
}

// copyOwn returns a new data directory holding the application
// certificate and key of appDir.
func copyOwn(t *testing.T, appDir string) string {
	t.Helper()
	dir := t.TempDir()
	own := filepath.Join(dir, "opcua", "own")
	if err := os.MkdirAll(own, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"cert.pem", "key.pem"} {
		b, err := os.ReadFile(filepath.Join(appDir, "opcua", "own", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(own, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
