package share

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// Version is the contribution format's version, the v of every payload.
const Version = 1

// KPI names a contribution may carry, the kpi tag of the benchmark
// measurement. They are the kpi measurement's field names.
const (
	KPIOEE               = "oee"
	KPIAvailability      = "availability"
	KPIPerformance       = "performance"
	KPIQuality           = "quality"
	KPIMTBF              = "mtbf_s"
	KPIMTTR              = "mttr_s"
	KPIEnergyPerGoodPart = "energy_per_good_part_wh"
)

// KPIs lists every shared KPI.
var KPIs = []string{KPIOEE, KPIAvailability, KPIPerformance, KPIQuality, KPIMTBF, KPIMTTR, KPIEnergyPerGoodPart}

// IsRatio reports whether kpi is a ratio between 0 and 1.
func IsRatio(kpi string) bool {
	switch kpi {
	case KPIOEE, KPIAvailability, KPIPerformance, KPIQuality:
		return true
	}
	return false
}

// Contribution is what one firm shares for one machine class and period:
// the mean of its machines' KPIs and how many machines that is. It is
// the whole payload; nothing else about the firm is sent.
type Contribution struct {
	Version int `json:"v"`
	// Contributor is the firm's pseudonym, the same as in the topic.
	Contributor string `json:"contributor"`
	Class       string `json:"class"`
	// Period is the window kind ("1h") and Start its beginning in UTC,
	// the only time in a contribution.
	Period   string             `json:"period"`
	Start    time.Time          `json:"start"`
	Machines int                `json:"machines"`
	KPIs     map[string]float64 `json:"kpis"`
}

// Topic is where a contribution is published: <prefix>/contrib/<pseudonym>/<class>.
// The broker's ACL lets a firm publish only under its own pseudonym.
func Topic(prefix, pseudonym, class string) string {
	return prefix + "/contrib/" + pseudonym + "/" + class
}

// PseudonymLen is the length of a pseudonym in hex digits: 128 bits,
// enough that two firms never collide and nobody can guess one.
const PseudonymLen = 32

// pseudonymLabel is the HMAC message; a new version of the scheme changes
// it, and so every firm's pseudonym at once.
const pseudonymLabel = "shopfloor-contributor-v1"

// Pseudonym derives the firm's contributor id from its secret:
// HMAC-SHA256 keyed with the secret as it is (the raw bytes, not hex) over
// the ASCII message "shopfloor-contributor-v1", of which the first 16
// bytes of the 32-byte MAC are the id, in lower-case hex. It is stable for as long as the secret file is kept, and says
// nothing about the firm to anyone without the secret.
func Pseudonym(secret []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(pseudonymLabel))
	return hex.EncodeToString(mac.Sum(nil))[:PseudonymLen]
}

// SecretFile is the firm secret's file inside the share directory.
const SecretFile = "secret"

// secretLen is the size of the firm secret.
const secretLen = 32

// Dir is the share directory inside an agent's data directory.
func Dir(dataDir string) string { return filepath.Join(dataDir, "share") }

// LoadOrCreateSecret reads the firm secret from dir, creating it with 32
// random bytes (mode 0600) the first time. Losing the file gives the firm
// a new pseudonym, which the coordinator must then register.
func LoadOrCreateSecret(dir string) ([]byte, error) {
	path := filepath.Join(dir, SecretFile)
	b, err := os.ReadFile(path)
	if err == nil {
		if len(b) != secretLen {
			return nil, fmt.Errorf("share: %s holds %d bytes, want %d; restore it from a backup (deleting it gives the firm a new pseudonym)", path, len(b), secretLen)
		}
		return b, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("share: read secret: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("share: %w", err)
	}
	secret := make([]byte, secretLen)
	if _, err := io.ReadFull(rand.Reader, secret); err != nil {
		return nil, fmt.Errorf("share: create secret: %w", err)
	}
	// O_EXCL: two agents started at once on one data directory must not
	// end up with different secrets.
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if errors.Is(err, os.ErrExist) {
		return LoadOrCreateSecret(dir)
	}
	if err != nil {
		return nil, fmt.Errorf("share: create secret: %w", err)
	}
	if _, err := f.Write(secret); err != nil {
		f.Close()
		return nil, fmt.Errorf("share: write secret: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("share: write secret: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("share: write secret: %w", err)
	}
	return secret, nil
}

// PseudonymOf returns the pseudonym of the agent whose data directory is
// dataDir: Pseudonym of the 32 raw bytes of <dataDir>/share/secret,
// creating that file when there is none yet. `shopfloor
// share-id` prints it so the coordinator can create the firm's broker user.
func PseudonymOf(dataDir string) (string, error) {
	secret, err := LoadOrCreateSecret(Dir(dataDir))
	if err != nil {
		return "", err
	}
	return Pseudonym(secret), nil
}
