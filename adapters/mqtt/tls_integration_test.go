//go:build integration

package mqtt

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// pki is a throw-away certificate authority with the files a TLS broker
// and its clients need.
type pki struct {
	dir  string
	ca   *x509.Certificate
	key  *ecdsa.PrivateKey
	CA   string // PEM file of the CA certificate
	pool *x509.CertPool
}

func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	p := &pki{dir: t.TempDir(), ca: ca, key: key, pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	p.CA = p.write(t, name+"-ca.pem", "CERTIFICATE", der)
	return p
}

func (p *pki) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue signs a leaf certificate for 127.0.0.1 and returns its cert and
// key files.
func (p *pki) issue(t *testing.T, name string, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return p.write(t, name+".pem", "CERTIFICATE", der), p.write(t, name+".key", "EC PRIVATE KEY", kder)
}

// mosquittoPassword is a Mosquitto 2 password file line: PBKDF2-SHA512,
// 101 iterations, the "$7$" format mosquitto_passwd writes.
func mosquittoPassword(t *testing.T, user, password string) string {
	t.Helper()
	salt := make([]byte, 12)
	if _, err := rand.Read(salt); err != nil {
		t.Fatal(err)
	}
	hash, err := pbkdf2.Key(sha512.New, password, salt, 101, sha512.Size)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s:$7$101$%s$%s\n", user, base64.StdEncoding.EncodeToString(salt), base64.StdEncoding.EncodeToString(hash))
}

// secureBroker starts Mosquitto requiring TLS, a client certificate from
// p, and user "agent" with password "s3cret".
func secureBroker(t *testing.T, p *pki) *collectortest.Service {
	t.Helper()
	cert, key := p.issue(t, "broker", x509.ExtKeyUsageServerAuth)
	pw := filepath.Join(p.dir, "passwd")
	if err := os.WriteFile(pw, []byte(mosquittoPassword(t, "agent", "s3cret")), 0o600); err != nil {
		t.Fatal(err)
	}
	return collectortest.Mosquitto(t,
		"cafile "+p.CA, "certfile "+cert, "keyfile "+key,
		"require_certificate true", "password_file "+pw, "allow_anonymous false")
}

// TestSourceTLSClientCertAndPassword: the source verifies the broker
// against its CA, presents its client certificate and logs in; messages
// then flow as over plain TCP.
func TestSourceTLSClientCertAndPassword(t *testing.T) {
	p := newPKI(t, "plant")
	svc := secureBroker(t, p)
	url := fmt.Sprintf("ssl://127.0.0.1:%d", svc.Port)
	clientCert, clientKey := p.issue(t, "agent", x509.ExtKeyUsageClientAuth)

	cfg := testConfig(url, "agent-tls")
	cfg.Username, cfg.Password = "agent", "s3cret"
	cfg.TLS = TLSConfig{CAFile: p.CA, CertFile: clientCert, KeyFile: clientKey}
	out := &collectortest.Output{}
	start(t, newSource(t, cfg), out)
	connected(t, out, 1)

	pubCert, pubKey := p.issue(t, "publisher", x509.ExtKeyUsageClientAuth)
	pair, err := tls.LoadX509KeyPair(pubCert, pubKey)
	if err != nil {
		t.Fatal(err)
	}
	opts := paho.NewClientOptions().AddBroker(url).SetClientID("pub-tls").SetUsername("agent").SetPassword("s3cret").
		SetTLSConfig(&tls.Config{RootCAs: p.pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}).
		SetAutoReconnect(false)
	pub := paho.NewClient(opts)
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publisher connect: %v", tok.Error())
	}
	defer pub.Disconnect(100)
	collectortest.Publish(t, pub, seqMsgs("factory/l1/m1/telemetry", 0, 50)...)
	waitSeqs(t, out, 50)
}

// TestSourceTLSRefusals: each way a secure connection can fail ends Run
// with an error that says which.
func TestSourceTLSRefusals(t *testing.T) {
	p := newPKI(t, "plant")
	svc := secureBroker(t, p)
	url := fmt.Sprintf("ssl://127.0.0.1:%d", svc.Port)
	clientCert, clientKey := p.issue(t, "agent", x509.ExtKeyUsageClientAuth)
	stranger := newPKI(t, "stranger")
	strangerCert, strangerKey := stranger.issue(t, "agent", x509.ExtKeyUsageClientAuth)

	tests := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"wrong password", func(c *Config) { c.Password = "guess" }, "check username and password"},
		{"broker cert from an unknown CA", func(c *Config) { c.TLS.CAFile = stranger.CA }, "not signed by a ca in tls.ca_file"},
		// With TLS 1.3 the client learns of the refusal either as the
		// broker's alert or as a reset on its first write, whichever
		// comes first, so only the failure itself is certain.
		{"client cert from an unknown CA", func(c *Config) { c.TLS.CertFile, c.TLS.KeyFile = strangerCert, strangerKey }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(url, "agent-refused")
			cfg.Username, cfg.Password = "agent", "s3cret"
			cfg.TLS = TLSConfig{CAFile: p.CA, CertFile: clientCert, KeyFile: clientKey}
			cfg.ConnectTimeout = 3 * time.Second
			tt.edit(&cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			err := newSource(t, cfg).Run(ctx, &collectortest.Output{})
			if err == nil || ctx.Err() != nil {
				t.Fatalf("Run = %v (ctx %v), want a connection error", err, ctx.Err())
			}
			t.Logf("Run: %v", err)
			if !strings.Contains(err.Error(), url) || !strings.Contains(strings.ToLower(err.Error()), tt.want) {
				t.Errorf("Run = %v, want an error naming %s and %q", err, url, tt.want)
			}
		})
	}
}
