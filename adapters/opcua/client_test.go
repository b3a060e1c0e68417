package opcua

import (
	"fmt"
	"strings"
	"testing"

	"github.com/gopcua/opcua/ua"
)

// TestConnectHint: a refused login is explained by the login method in
// use, since servers answer a refused certificate with the same status
// codes as a refused password.
func TestConnectHint(t *testing.T) {
	cert, _, err := generateCert("urn:shopfloor:test")
	if err != nil {
		t.Fatal(err)
	}
	rejected := fmt.Errorf("activate session: %w", ua.StatusBadIdentityTokenRejected)
	for _, tc := range []struct {
		name      string
		err       error
		auth      Auth
		want, not []string
	}{
		{"password", rejected, Auth{Method: AuthUsername, Username: "u"}, []string{"auth.password"}, []string{"certificate"}},
		{"anonymous", fmt.Errorf("x: %w", ua.StatusBadUserAccessDenied), Auth{Method: AuthAnonymous}, []string{"anonymous", "auth.username"}, nil},
		{"cert file", rejected, Auth{Method: AuthCertificate, CertFile: "/etc/shopfloor/user.der", KeyFile: "/etc/shopfloor/user.key"},
			[]string{"the user certificate /etc/shopfloor/user.der", Thumbprint(cert), "trust it"}, []string{"password"}},
		{"application cert", rejected, Auth{Method: AuthCertificate},
			[]string{"the application certificate /data/opcua/own/cert.pem as user certificate", Thumbprint(cert), "trust it"}, []string{"password"}},
		{"wrong key", fmt.Errorf("x: %w", ua.StatusBadUserSignatureInvalid), Auth{Method: AuthCertificate, CertFile: "u.der", KeyFile: "u.key"},
			[]string{"could not verify", "u.der"}, []string{"password"}},
		{"application cert untrusted", fmt.Errorf("x: %w", ua.StatusBadCertificateUntrusted), Auth{Method: AuthCertificate},
			[]string{"application certificate yet"}, nil},
	} {
		got := connectHint(tc.err, tc.auth, cert, "/data/opcua/own/cert.pem")
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: hint %q lacks %q", tc.name, got, w)
			}
		}
		for _, n := range tc.not {
			if strings.Contains(got, n) {
				t.Errorf("%s: hint %q mentions %q", tc.name, got, n)
			}
		}
	}
}
