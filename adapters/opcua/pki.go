package opcua

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // OPC UA names certificates by their SHA-1 thumbprint
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/renameio/v2"
)

// certValidity is long because replacing the agent's certificate means
// re-trusting it on every server; 20 years outlives the hardware.
const certValidity = 20 * 365 * 24 * time.Hour

// certBits is the RSA size every non-deprecated policy accepts.
const certBits = 2048

// PKI is the agent's certificate store under <data_dir>/opcua: own/ holds
// the application certificate and key, trusted/ the server certificates
// (or their CAs) the operator trusts, rejected/ the unknown ones a server
// presented, waiting for the operator.
type PKI struct {
	Dir string
	log *slog.Logger
	mu  sync.Mutex
}

func newPKI(dataDir string, logger *slog.Logger) *PKI {
	return &PKI{Dir: filepath.Join(dataDir, "opcua"), log: logger}
}

func (p *PKI) own() string      { return filepath.Join(p.Dir, "own") }
func (p *PKI) trusted() string  { return filepath.Join(p.Dir, "trusted") }
func (p *PKI) rejected() string { return filepath.Join(p.Dir, "rejected") }

// CertPath and KeyPath are where the application certificate lives.
func (p *PKI) CertPath() string { return filepath.Join(p.own(), "cert.pem") }

// KeyPath is the application certificate's private key.
func (p *PKI) KeyPath() string { return filepath.Join(p.own(), "key.pem") }

// ApplicationCertificate returns the application certificate (DER) and
// key, generating them on first use. An existing certificate is reused
// as it is, even when appURI changed, because servers trust it by its
// thumbprint; the log says when it no longer matches.
func (p *PKI) ApplicationCertificate(appURI string) ([]byte, *rsa.PrivateKey, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, d := range []string{p.own(), p.trusted(), p.rejected()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, nil, fmt.Errorf("create %s: %w; make the data directory writable", d, err)
		}
	}
	der, key, err := loadKeyPair(p.CertPath(), p.KeyPath())
	if err == nil {
		if c, perr := x509.ParseCertificate(der); perr == nil && !hasURI(c, appURI) {
			p.log.Warn("the application certificate names another application_uri; servers may refuse the session. Delete it to have a new one generated (and trust the new one on every server)",
				"cert", p.CertPath(), "application_uri", appURI)
		}
		return der, key, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("application certificate %s: %w; delete %s and %s to have a new one generated", p.CertPath(), err, p.CertPath(), p.KeyPath())
	}
	der, key, err = generateCert(appURI)
	if err != nil {
		return nil, nil, err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := writeFileAtomic(p.KeyPath(), keyPEM, 0o600); err != nil {
		return nil, nil, err
	}
	if err := writeFileAtomic(p.CertPath(), certPEM, 0o644); err != nil {
		return nil, nil, err
	}
	p.log.Info("generated the OPC UA application certificate; servers that check clients must trust it",
		"cert", p.CertPath(), "application_uri", appURI, "thumbprint", Thumbprint(der))
	return der, key, nil
}

func hasURI(c *x509.Certificate, uri string) bool {
	for _, u := range c.URIs {
		if u.String() == uri {
			return true
		}
	}
	return false
}

func generateCert(appURI string) ([]byte, *rsa.PrivateKey, error) {
	key, err := rsa.GenerateKey(rand.Reader, certBits)
	if err != nil {
		return nil, nil, fmt.Errorf("generate application key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, fmt.Errorf("generate serial number: %w", err)
	}
	u, err := url.Parse(appURI)
	if err != nil {
		return nil, nil, fmt.Errorf("application_uri %q: %w", appURI, err)
	}
	host, _ := os.Hostname()
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "shopfloor@" + host, Organization: []string{"shopfloor"}},
		NotBefore:    now.Add(-time.Hour), // a server whose clock lags still accepts it
		NotAfter:     now.Add(certValidity),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment |
			x509.KeyUsageKeyEncipherment | x509.KeyUsageDataEncipherment | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		// OPC UA (Part 6, 6.2.2) wants the ApplicationUri in the
		// SubjectAltName; servers compare it with the session's.
		URIs:        []*url.URL{u},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	if host != "" && host != "localhost" {
		tmpl.DNSNames = append(tmpl.DNSNames, host)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create application certificate: %w", err)
	}
	return der, key, nil
}

func loadKeyPair(certPath, keyPath string) ([]byte, *rsa.PrivateKey, error) {
	certBytes, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	keyBytes, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	der := certBytes
	if b, _ := pem.Decode(certBytes); b != nil {
		der = b.Bytes
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certPath, err)
	}
	kb := keyBytes
	if b, _ := pem.Decode(keyBytes); b != nil {
		kb = b.Bytes
	}
	rk, err := x509.ParsePKCS1PrivateKey(kb)
	if err != nil {
		k, err8 := x509.ParsePKCS8PrivateKey(kb)
		if err8 != nil {
			return nil, nil, fmt.Errorf("%s: not an RSA private key: %w", keyPath, err8)
		}
		var ok bool
		if rk, ok = k.(*rsa.PrivateKey); !ok {
			return nil, nil, fmt.Errorf("%s: OPC UA needs an RSA key, got %T", keyPath, k)
		}
	}
	// A key of another certificate would only show at the server, as
	// a signature it cannot verify; say it here, naming both files.
	if pub, ok := cert.PublicKey.(*rsa.PublicKey); !ok || !pub.Equal(&rk.PublicKey) {
		return nil, nil, fmt.Errorf("%s is not the private key of %s", keyPath, certPath)
	}
	return der, rk, nil
}

func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	if err := renameio.WriteFile(path, data, perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Thumbprint is the SHA-1 of a DER certificate in hex, the name OPC UA
// tools show for a certificate.
func Thumbprint(der []byte) string {
	sum := sha1.Sum(der) //nolint:gosec // identification, not security
	return hex.EncodeToString(sum[:])
}

// ErrUntrusted is returned when a server presents a certificate that is
// not in the trust list.
var ErrUntrusted = errors.New("server certificate is not trusted")

// CheckServer accepts a server certificate that is in trusted/ (itself,
// or signed by a CA there). An unknown one is written to rejected/ and
// refused with an error saying how to trust it; with tofu it is trusted
// instead when no trusted certificate names the same application URI.
func (p *PKI) CheckServer(der []byte, endpoint string, tofu bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("server %s sent a certificate that does not parse: %w", endpoint, err)
	}
	trusted, err := readCerts(p.trusted())
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	for _, t := range trusted {
		if string(t.Raw) == string(der) {
			return nil
		}
		roots.AddCert(t)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil && len(trusted) > 0 && !isSelfSigned(cert) {
		return nil
	}
	name := certFileName(cert)
	if tofu && !sameApplication(trusted, cert) {
		path := filepath.Join(p.trusted(), name)
		if err := writeFileAtomic(path, der, 0o644); err != nil {
			return err
		}
		p.log.Warn("trusted a new OPC UA server certificate on first use", "endpoint", endpoint, "cert", path, "thumbprint", Thumbprint(der))
		return nil
	}
	path := filepath.Join(p.rejected(), name)
	if err := writeFileAtomic(path, der, 0o644); err != nil {
		return err
	}
	p.log.Error("OPC UA server certificate is not trusted; if it is the right server, trust it by moving the file: mv "+path+" "+p.trusted()+"/",
		"endpoint", endpoint, "thumbprint", Thumbprint(der), "subject", cert.Subject.String())
	return fmt.Errorf("%w: %s presented %s (thumbprint %s); saved to %s: move it to %s to trust it",
		ErrUntrusted, endpoint, cert.Subject.CommonName, Thumbprint(der), path, p.trusted())
}

func isSelfSigned(c *x509.Certificate) bool {
	return c.CheckSignatureFrom(c) == nil
}

func sameApplication(trusted []*x509.Certificate, c *x509.Certificate) bool {
	for _, t := range trusted {
		for _, u := range t.URIs {
			for _, v := range c.URIs {
				if u.String() == v.String() {
					return true
				}
			}
		}
	}
	return false
}

func certFileName(c *x509.Certificate) string {
	cn := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, c.Subject.CommonName)
	if len(cn) > 40 {
		cn = cn[:40]
	}
	return cn + "_" + Thumbprint(c.Raw) + ".der"
}

// readCerts loads every certificate in dir, DER or PEM.
func readCerts(dir string) ([]*x509.Certificate, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("read trust list %s: %w", dir, err)
	}
	var out []*x509.Certificate
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		for len(b) > 0 {
			blk, rest := pem.Decode(b)
			if blk == nil {
				if c, err := x509.ParseCertificate(b); err == nil {
					out = append(out, c)
				}
				break
			}
			if c, err := x509.ParseCertificate(blk.Bytes); err == nil {
				out = append(out, c)
			}
			b = rest
		}
	}
	return out, nil
}
