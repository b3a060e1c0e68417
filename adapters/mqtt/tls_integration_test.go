//go:build integration

package mqtt

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// secureBroker starts Mosquitto requiring TLS, a client certificate from
// p, and user "agent" with password "s3cret".
func secureBroker(t *testing.T, p *collectortest.PKI) *collectortest.Service {
	t.Helper()
	cert, key := p.Issue(t, "broker", x509.ExtKeyUsageServerAuth)
	pw := filepath.Join(p.Dir, "passwd")
	if err := os.WriteFile(pw, []byte(collectortest.MosquittoPassword(t, "agent", "s3cret")), 0o600); err != nil {
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
	p := collectortest.NewPKI(t, "plant")
	svc := secureBroker(t, p)
	url := fmt.Sprintf("ssl://127.0.0.1:%d", svc.Port)
	clientCert, clientKey := p.Issue(t, "agent", x509.ExtKeyUsageClientAuth)

	cfg := testConfig(url, "agent-tls")
	cfg.Username, cfg.Password = "agent", "s3cret"
	cfg.TLS = TLSConfig{CAFile: p.CA, CertFile: clientCert, KeyFile: clientKey}
	out := &collectortest.Output{}
	collectortest.Start(t, newSource(t, cfg), out)
	collectortest.WaitConnected(t, out, 1)

	pubCert, pubKey := p.Issue(t, "publisher", x509.ExtKeyUsageClientAuth)
	pair, err := tls.LoadX509KeyPair(pubCert, pubKey)
	if err != nil {
		t.Fatal(err)
	}
	opts := paho.NewClientOptions().AddBroker(url).SetClientID("pub-tls").SetUsername("agent").SetPassword("s3cret").
		SetTLSConfig(&tls.Config{RootCAs: p.Pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}).
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
	p := collectortest.NewPKI(t, "plant")
	svc := secureBroker(t, p)
	url := fmt.Sprintf("ssl://127.0.0.1:%d", svc.Port)
	clientCert, clientKey := p.Issue(t, "agent", x509.ExtKeyUsageClientAuth)
	stranger := collectortest.NewPKI(t, "stranger")
	strangerCert, strangerKey := stranger.Issue(t, "agent", x509.ExtKeyUsageClientAuth)

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
