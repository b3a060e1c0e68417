package mqtt

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/google/renameio/v2"
)

// A persistent session outlives the agent's config: after connections
// went from 4 to 2, the broker still keeps client_id-3 and client_id-4,
// and with them their shared subscriptions, so it would go on queueing
// messages there that nobody reads. The source therefore records the
// client ids it connects as (WithStateDir), and at the next connect takes
// over what the ones it no longer uses hold and deletes them. Only ids the
// agent recorded itself are touched: connecting as someone else's id
// would throw that client off the broker.

const (
	// retireQuiet is how long a retired session must deliver nothing, with
	// everything it delivered acknowledged, before it is deleted.
	retireQuiet = time.Second
	// retireMax bounds the take-over of one session; what is left stays
	// in it for the next start.
	retireMax = time.Minute
)

// Option tunes a Source beyond its Config.
type Option func(*Source)

// WithStateDir keeps the source's record of its broker sessions in dir,
// which makes retiring unused sessions possible.
func WithStateDir(dir string) Option { return func(s *Source) { s.stateDir = dir } }

// sessionsFile is the record of the client ids with a persistent session.
const sessionsFile = "sessions.json"

type sessionsRecord struct {
	ClientIDs []string `json:"client_ids"`
}

// retireSessions retires the recorded sessions this config no longer
// uses and records the ones it does. It logs what it did and never fails
// the run: at worst a session is left for the next connect.
func (r *run) retireSessions(ctx context.Context) {
	if r.s.stateDir == "" {
		return
	}
	path := filepath.Join(r.s.stateDir, sessionsFile)
	var old sessionsRecord
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &old); err != nil {
			r.s.log.Warn("cannot read the record of MQTT sessions; old sessions are not retired", "file", path, "err", err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		r.s.log.Warn("cannot read the record of MQTT sessions; old sessions are not retired", "file", path, "err", err)
	}
	var keep []string
	if !r.s.cfg.CleanSession {
		keep = r.s.cfg.clientIDs()
	}
	for _, id := range old.ClientIDs {
		if slices.Contains(keep, id) {
			continue
		}
		if slices.Contains(r.s.cfg.clientIDs(), id) {
			continue // in use with a clean session: the broker drops it itself
		}
		if _, err := r.retire(ctx, id); err != nil {
			r.s.log.Warn("could not retire an old MQTT session; it is tried again at the next connect", "client_id", id, "err", err)
			keep = append(keep, id)
		}
	}
	if err := writeSessions(path, keep); err != nil {
		r.s.log.Warn("cannot record the MQTT sessions", "file", path, "err", err)
	}
}

func writeSessions(path string, ids []string) error {
	b, err := json.Marshal(sessionsRecord{ClientIDs: ids})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	return renameio.WriteFile(path, b, 0o640)
}

// retire connects as id. When the broker had a session for it, it stops
// that session's subscriptions, takes its queued messages through the
// normal path until it is quiet and everything is acknowledged, and then
// deletes it with a clean-session connect. It reports whether there was a
// session.
func (r *run) retire(ctx context.Context, id string) (bool, error) {
	var received, acked atomic.Int64
	wrap := func(m paho.Message) paho.Message {
		received.Add(1)
		return &countedMessage{Message: m, acked: &acked}
	}
	c, present, err := r.connect(ctx, id, false, wrap, nil)
	if err != nil {
		return false, err
	}
	if present {
		r.s.log.Info("taking over an MQTT session the config no longer uses", "client_id", id)
		var filters []string
		for _, f := range r.s.cfg.filters() {
			filters = append(filters, f)
		}
		for _, s := range r.s.cfg.Subscriptions {
			filters = append(filters, s.Topic, "$share/"+r.s.cfg.ShareGroup+"/"+s.Topic)
		}
		// Stops new messages; what is queued still comes.
		if tok := c.Unsubscribe(filters...); !tok.WaitTimeout(r.s.cfg.ConnectTimeout) || tok.Error() != nil {
			c.Disconnect(0)
			return true, errOr(tok.Error(), "no UNSUBACK")
		}
		deadline := time.Now().Add(retireMax)
		last, quietSince := int64(-1), time.Now()
		for {
			n := received.Load()
			if n != last {
				last, quietSince = n, time.Now()
			}
			if acked.Load() == n && time.Since(quietSince) >= retireQuiet {
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil || !c.IsConnectionOpen() {
				c.Disconnect(disconnectQuiesce)
				return true, errOr(ctx.Err(), "its messages did not all get acknowledged in time")
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
		r.s.log.Info("took over an old MQTT session", "client_id", id, "messages", received.Load())
	}
	c.Disconnect(disconnectQuiesce)
	// A clean-session connect deletes the session (the probe above made
	// one even where there was none).
	c, _, err = r.connect(ctx, id, true, nil, nil)
	if err != nil {
		return present, err
	}
	c.Disconnect(disconnectQuiesce)
	return present, nil
}

// countedMessage counts its ack, so retire knows when a session's
// messages are all done.
type countedMessage struct {
	paho.Message
	acked *atomic.Int64
}

func (m *countedMessage) Ack() {
	m.Message.Ack()
	m.acked.Add(1)
}

// errOr is err, or a new error saying msg when err is nil.
func errOr(err error, msg string) error {
	if err != nil {
		return err
	}
	return errors.New(msg)
}
