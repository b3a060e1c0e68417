package share

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
)

// TestPseudonymKnownAnswer: the contributor id is HMAC-SHA256 keyed with
// the raw bytes of <data_dir>/share/secret over
// "shopfloor-contributor-v1", truncated to 16 bytes in lower-case hex.
// It is checked against the MAC computed here and against fixed vectors
// (confirmed with `openssl dgst -sha256 -mac HMAC`), so a change of the
// derivation, which would give every firm a new pseudonym and break its
// broker ACL, fails. A secret file of the wrong size is refused, not
// replaced.
func TestPseudonymKnownAnswer(t *testing.T) {
	counting := make([]byte, 32)
	for i := range counting {
		counting[i] = byte(i)
	}
	tests := []struct {
		name   string
		secret []byte
		want   string // "" when the secret must be refused
	}{
		{"bytes 0 to 31", counting, "acd584255b57090d0d6e6c614f0a5f0a"},
		{"32 times a5", bytes.Repeat([]byte{0xa5}, 32), "846fba565647374112d1440ddc14eace"},
		{"31 bytes", counting[:31], ""},
		{"secret in hex, 64 bytes", []byte(hex.EncodeToString(counting)), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dataDir := t.TempDir()
			if err := os.MkdirAll(filepath.Join(dataDir, "share"), 0o700); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dataDir, "share", "secret")
			if err := os.WriteFile(path, tt.secret, 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := PseudonymOf(dataDir)
			if after, rerr := os.ReadFile(path); rerr != nil || !bytes.Equal(after, tt.secret) {
				t.Fatalf("the secret file changed: %x (%v)", after, rerr)
			}
			if tt.want == "" {
				if err == nil {
					t.Fatalf("PseudonymOf accepted a %d-byte secret: %s", len(tt.secret), got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			mac := hmac.New(sha256.New, tt.secret)
			mac.Write([]byte("shopfloor-contributor-v1"))
			independent := hex.EncodeToString(mac.Sum(nil)[:16])
			if got != independent {
				t.Errorf("PseudonymOf = %s, HMAC-SHA256 computed here %s", got, independent)
			}
			if got != tt.want {
				t.Errorf("PseudonymOf = %s, known answer %s", got, tt.want)
			}
			if Pseudonym(tt.secret) != got {
				t.Errorf("Pseudonym(secret) = %s, PseudonymOf = %s", Pseudonym(tt.secret), got)
			}
		})
	}
}
