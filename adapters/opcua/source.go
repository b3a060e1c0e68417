package opcua

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gopcua/opcua"
	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"

	"github.com/noordoostpolder/shopfloor/collector"
)

// closeTimeout bounds the whole goodbye (delete subscription, close
// session), so a server that stopped answering cannot hold up the
// agent's drain or a reconnect. A server that answers at all does so in
// milliseconds; two seconds leave room for a slow link.
const closeTimeout = 2 * time.Second

// Source is an OPC UA source. It keeps what it learned across Run calls
// (the previous subscription, the bad nodes), so a reconnect can take over
// what the last session left on the server.
type Source struct {
	cfg   Config
	log   *slog.Logger
	pki   *PKI
	paths []Path // parsed Path per cfg.Nodes entry, nil for node ids

	mu       sync.Mutex
	bad      map[string]BadNode
	prevSubs []uint32
	// serverStart is the server's StartTime seen by the last Run; a
	// different one means the server restarted and kept nothing of ours.
	serverStart time.Time
	// last is the newest source time emitted per node (by node id),
	// carried from one Run to the next: where a back-fill starts, and
	// what a re-read value after a reconnect is compared with.
	last map[string]time.Time
	// historyOff names the nodes whose HistoryRead the server refused;
	// they are not asked again while the source lives.
	historyOff map[string]bool
	// historyRefused is set when the server refused the HistoryRead
	// service itself: no back-fill is tried again while the source lives.
	historyRefused bool
	// transferRefused is set when the server refused
	// TransferSubscriptions: it is not asked again while the source lives.
	transferRefused bool
	// downSince is when the connection was lost, zero while up.
	downSince time.Time
	// historyPerRead is NumValuesPerNode of each HistoryRead:
	// historyValuesPerNode, lower in tests that follow continuation
	// points.
	historyPerRead uint32
}

var _ collector.Source = (*Source)(nil)

// BadNode is a configured node or pattern that currently yields nothing.
type BadNode struct {
	// Node is the node id, or the browse path of a pattern.
	Node   string    `json:"node"`
	Reason string    `json:"reason"`
	Error  string    `json:"error"`
	Since  time.Time `json:"since"`
}

// New checks cfg (after applying its defaults) and prepares the
// certificate store under dataDir/opcua. The application certificate is
// created here, so a read-only data directory fails at start-up. A nil
// logger discards.
func New(cfg Config, dataDir string, logger *slog.Logger) (*Source, error) {
	cfg.Nodes = append([]Node(nil), cfg.Nodes...)
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Source{cfg: cfg, log: logger, pki: newPKI(dataDir, logger), bad: map[string]BadNode{},
		last: map[string]time.Time{}, historyOff: map[string]bool{}, historyPerRead: historyValuesPerNode}
	appURI := cfg.ApplicationURI
	if appURI == "" {
		appURI = defaultApplicationURI()
	}
	if _, _, err := s.pki.ApplicationCertificate(appURI); err != nil {
		return nil, err
	}
	s.paths = make([]Path, len(cfg.Nodes))
	for i, n := range cfg.Nodes {
		if n.Path != "" {
			s.paths[i], _ = ParsePath(n.Path) // validated
		}
	}
	if cfg.Auth.Method == AuthUsername && cfg.SecurityPolicy == PolicyNone {
		logger.Warn("username login over security_policy None: the password is protected only if the server's token policy encrypts it", "endpoint", cfg.Endpoint)
	}
	return s, nil
}

// PKI returns the source's certificate store.
func (s *Source) PKI() *PKI { return s.pki }

// BadNodes lists the nodes and patterns that currently yield nothing,
// for /readyz and the status page.
func (s *Source) BadNodes() []BadNode {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]BadNode, 0, len(s.bad))
	for _, b := range s.bad {
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

func (s *Source) markBad(out collector.Output, key, reason string, err error) {
	s.mu.Lock()
	_, known := s.bad[key]
	if !known {
		s.bad[key] = BadNode{Node: key, Reason: reason, Error: err.Error(), Since: time.Now()}
	}
	s.mu.Unlock()
	out.Bad(reason, fmt.Errorf("opcua %s: %w", s.cfg.Endpoint, err))
	if !known {
		s.log.Warn("node yields nothing; retrying every "+s.cfg.BadNodeRetry.String(), "node", key, "reason", reason, "err", err)
	}
}

func (s *Source) markGood(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.bad[key]; ok {
		delete(s.bad, key)
		s.log.Info("node recovered", "node", key)
	}
}

// item is one variable being read.
type item struct {
	node    *ua.NodeID
	key     string // node id string
	cfgKey  string // what BadNodes names: node id, or the pattern
	name    string // signal name before mapping
	origin  string
	cfg     *Node
	enums   enumNames
	unit    string // the EngineeringUnits display name, empty if none
	numeric bool
	history bool // Historizing, or AccessLevel grants HistoryRead
	bad     bool
	monID   uint32

	// prev is the newest source time emitted for this node before this
	// Run (zero if none), last the newest so far, histEnd the newest
	// emitted by this Run's back-fill. While window is set, a live value
	// stamped within [prev, max(prev, histEnd)] was emitted already: the
	// current value re-read at reconnection, or one the back-fill read.
	prev, last, histEnd time.Time
	window              bool
}

// run is the state of one Run call.
type run struct {
	s      *Source
	out    collector.Output
	c      *opcua.Client
	items  []*item
	byKey  map[string]*item
	limits limits
	sub    *opcua.Subscription
	notify chan *opcua.PublishNotificationData
	buf    []collector.Sample
	// dead is set when the connection is known not to answer any more
	// (the watchdog read, or a goodbye request, timed out): the goodbye
	// is not tried, or not further, since it could only wait.
	dead bool
}

// errRedial ends a Run whose connection gopcua dropped for a reason that
// is not an outage (a service fault): Run connects again at once,
// without reporting the source down.
var errRedial = errors.New("redial")

// Run connects, resolves the nodes, subscribes (or polls) and delivers
// batches until ctx ends (it then deletes its subscription, closes the
// session and returns nil) or the connection breaks (it returns an error
// naming the endpoint; the supervisor calls Run again).
func (s *Source) Run(ctx context.Context, out collector.Output) error {
	// Each redial follows a refusal the source then remembers, so there
	// are at most two in a row (TransferSubscriptions, HistoryRead); the
	// bound keeps a mistake from turning into a busy loop.
	const maxRedials = 3
	for redials := 0; ; redials++ {
		err := s.runOnce(ctx, out)
		if !errors.Is(err, errRedial) {
			return err
		}
		if redials == maxRedials {
			err = fmt.Errorf("opcua %s: %w", s.cfg.Endpoint, err)
			out.Connected(false, err)
			return err
		}
	}
}

func (s *Source) runOnce(ctx context.Context, out collector.Output) (err error) {
	if ctx.Err() != nil {
		return nil
	}
	defer func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		switch {
		case err == nil || errors.Is(err, errRedial):
		case s.downSince.IsZero():
			s.downSince = time.Now()
		}
	}()
	fail := func(err error) error {
		err = fmt.Errorf("opcua %s: %w", s.cfg.Endpoint, err)
		out.Connected(false, err)
		return err
	}
	stateCh := make(chan opcua.ConnState, 16)
	c, err := dial(ctx, s.cfg, s.pki, s.log, stateCh)
	if err != nil {
		if ctx.Err() != nil {
			out.Connected(false, nil)
			return nil
		}
		return fail(err)
	}
	r := &run{s: s, out: out, c: c, byKey: map[string]*item{}}
	defer r.saveLast()
	defer r.goodbye()
	r.limits = readLimits(ctx, c, s.cfg.MaxItemsPerCall)

	if s.cfg.Mode == ModeSubscribe {
		if err := r.takeOver(ctx); err != nil {
			return err
		}
	}
	if err := r.resolveAll(ctx, s.cfg.Nodes, nil); err != nil {
		if ctx.Err() != nil {
			out.Connected(false, nil)
			return nil
		}
		return fail(err)
	}
	if s.cfg.Mode == ModeSubscribe {
		if err := r.subscribe(ctx); err != nil {
			if ctx.Err() != nil {
				out.Connected(false, nil)
				return nil
			}
			return fail(err)
		}
	}
	out.Connected(true, nil)
	s.log.Info("connected", "endpoint", s.cfg.Endpoint, "mode", s.cfg.Mode, "items", r.goodItems(), "bad", len(s.BadNodes()))
	// Before the first poll and before any notification is handled:
	// both would emit the current value and so move the start of the
	// gap past the values the back-fill is to read.
	if err := r.backfill(ctx); err != nil {
		return r.ended(ctx, err)
	}

	retry := time.NewTicker(s.cfg.BadNodeRetry)
	defer retry.Stop()
	watchdog := time.NewTicker(s.cfg.WatchdogInterval)
	defer watchdog.Stop()
	var poll <-chan time.Time
	if s.cfg.Mode == ModePoll {
		t := time.NewTicker(s.cfg.PollInterval)
		defer t.Stop()
		poll = t.C
		if err := r.poll(ctx); err != nil {
			return r.ended(ctx, err)
		}
	}
	for {
		select {
		case <-ctx.Done():
			out.Connected(false, nil)
			return nil
		case st := <-stateCh:
			// Not r.dead: gopcua reports a connection lost after a
			// service fault too, while the channel still carries the
			// goodbye; on a closed one the goodbye fails at once.
			if st == opcua.Disconnected || st == opcua.Closed {
				return r.ended(ctx, errors.New("connection lost"))
			}
		case n := <-r.notify:
			if err := r.handle(ctx, n); err != nil {
				return r.ended(ctx, err)
			}
		case <-poll:
			if err := r.poll(ctx); err != nil {
				return r.ended(ctx, err)
			}
		case <-retry.C:
			if err := r.retryBad(ctx); err != nil {
				return r.ended(ctx, err)
			}
		case <-watchdog.C:
			if err := r.watchdog(ctx); err != nil {
				return r.ended(ctx, err)
			}
		}
	}
}

// goodbye deletes the subscription and closes the session, within
// closeTimeout in all, and closes the connection. On a connection known
// to be dead it sends nothing: each request could only wait for its
// timeout, and waiting twice (delete, then close session) is what held
// up every reconnect after a silent outage for twice request_timeout.
// The subscription id stays remembered for the next Run to take over,
// and the server expires the session after session_timeout.
func (r *run) goodbye() {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	// gopcua reports the connection lost after a service fault although
	// the channel still works, so its state does not decide; r.dead does.
	if !r.dead && r.sub != nil {
		if err := r.sub.Cancel(ctx); err == nil {
			r.s.forgetSub(r.sub.SubscriptionID)
		} else if isConnErr(err) {
			r.dead = true // no answer to the delete: none to the close either
		}
	}
	if r.dead || r.c.CloseSession(ctx) != nil {
		// Close would send CloseSession again and wait once more.
		_, _ = r.c.DetachSession(ctx)
	}
	_ = r.c.Close(ctx)
}

// saveLast hands the newest source time of every node to the next Run.
func (r *run) saveLast() {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	for _, it := range r.items {
		if !it.last.IsZero() {
			r.s.last[it.key] = it.last
		}
	}
}

// watchdog reads the server's clock. A server that went away without
// closing the TCP connection (a restart behind a NAT, a pulled cable)
// leaves a subscription that is silent but not broken; this read notices.
func (r *run) watchdog(ctx context.Context) error {
	wctx, cancel := context.WithTimeout(ctx, r.s.cfg.RequestTimeout)
	defer cancel()
	res, err := r.c.Read(wctx, &ua.ReadRequest{NodesToRead: []*ua.ReadValueID{{
		NodeID: ua.NewNumericNodeID(0, id.Server_ServerStatus_CurrentTime), AttributeID: ua.AttributeIDValue, DataEncoding: &ua.QualifiedName{},
	}}})
	if err != nil {
		r.dead = true
		return fmt.Errorf("connection lost: the server did not answer the watchdog read within %s: %w", r.s.cfg.RequestTimeout, err)
	}
	if res.ResponseHeader != nil && res.ResponseHeader.ServiceResult != ua.StatusOK {
		return fmt.Errorf("connection lost: watchdog read: %w", res.ResponseHeader.ServiceResult)
	}
	return nil
}

func (r *run) ended(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		r.out.Connected(false, nil)
		return nil
	}
	if errors.Is(err, errRedial) {
		return err
	}
	err = fmt.Errorf("opcua %s: %w", r.s.cfg.Endpoint, err)
	r.out.Connected(false, err)
	return err
}

func (r *run) goodItems() int {
	n := 0
	for _, it := range r.items {
		if !it.bad {
			n++
		}
	}
	return n
}

func (s *Source) rememberSub(id uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.prevSubs = append(s.prevSubs, id)
}

func (s *Source) forgetSub(id uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, v := range s.prevSubs {
		if v == id {
			s.prevSubs = append(s.prevSubs[:i], s.prevSubs[i+1:]...)
			return
		}
	}
}

// takeOver moves the subscriptions an earlier session of ours may have
// left on the server (the network dropped, the server kept the session)
// into this session and deletes them, so that the server never holds
// two subscriptions of this agent. A server that restarted has nothing
// to take over. One without TransferSubscriptions answers with a
// service fault, on which gopcua drops the connection: the source notes
// it, never asks that server again, and takeOver returns errRedial so
// that Run connects afresh at once; the old subscription then ends with
// its session, after session_timeout.
func (r *run) takeOver(ctx context.Context) error {
	start := serverStartTime(ctx, r.c)
	r.s.mu.Lock()
	ids := append([]uint32(nil), r.s.prevSubs...)
	r.s.prevSubs = nil
	same := !start.IsZero() && start.Equal(r.s.serverStart)
	r.s.serverStart = start
	refused := r.s.transferRefused
	r.s.mu.Unlock()
	// Only a server that kept running can hold our old subscription;
	// asking a restarted one would be useless and could cost the
	// connection.
	if len(ids) == 0 || !same || refused {
		return nil
	}
	var tres *ua.TransferSubscriptionsResponse
	err := r.c.Send(ctx, &ua.TransferSubscriptionsRequest{SubscriptionIDs: ids}, func(v ua.Response) error {
		var ok bool
		tres, ok = v.(*ua.TransferSubscriptionsResponse)
		if !ok {
			return fmt.Errorf("unexpected response %T", v)
		}
		return nil
	})
	var sc ua.StatusCode
	if errors.As(err, &sc) && !isConnErr(err) && ctx.Err() == nil {
		r.s.mu.Lock()
		r.s.transferRefused = true
		r.s.mu.Unlock()
		r.s.log.Info("the server does not take over subscriptions (TransferSubscriptions); after a gap, the old one ends with its session", "endpoint", r.s.cfg.Endpoint, "status", sc, "session_timeout", r.s.cfg.SessionTimeout)
		return fmt.Errorf("TransferSubscriptions refused with %w; connecting again: %w", sc, errRedial)
	}
	if err != nil || tres == nil || tres.ResponseHeader.ServiceResult != ua.StatusOK {
		r.s.log.Debug("no earlier subscription to take over", "ids", ids, "err", err)
		return nil
	}
	var moved []uint32
	for i, res := range tres.Results {
		if res != nil && res.StatusCode == ua.StatusOK && i < len(ids) {
			moved = append(moved, ids[i])
		}
	}
	if len(moved) == 0 {
		return nil
	}
	_ = r.c.Send(ctx, &ua.DeleteSubscriptionsRequest{SubscriptionIDs: moved}, func(ua.Response) error { return nil })
	r.s.log.Info("took over and deleted the subscription of an earlier session", "ids", moved)
	return nil
}

// serverStartTime reads Server/ServerStatus/StartTime; zero when the
// server does not say.
func serverStartTime(ctx context.Context, c *opcua.Client) time.Time {
	res, err := c.Read(ctx, &ua.ReadRequest{NodesToRead: []*ua.ReadValueID{{
		NodeID: ua.NewNumericNodeID(0, id.Server_ServerStatus_StartTime), AttributeID: ua.AttributeIDValue, DataEncoding: &ua.QualifiedName{},
	}}})
	if err != nil || len(res.Results) != 1 || res.Results[0].Status != ua.StatusOK || res.Results[0].Value == nil {
		return time.Time{}
	}
	t, _ := res.Results[0].Value.Value().(time.Time)
	return t
}

// limits are the server's operation limits, already capped by the
// config.
type limits struct {
	monitoredItems, read, browse, historyRead int
}

func readLimits(ctx context.Context, c *opcua.Client, cfgMax int) limits {
	def := DefaultMaxItemsPerCall
	if cfgMax > 0 {
		def = cfgMax
	}
	l := limits{def, def, def, def}
	ids := []uint32{
		id.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
		id.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
		id.Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse,
		id.Server_ServerCapabilities_OperationLimits_MaxNodesPerHistoryReadData,
	}
	req := &ua.ReadRequest{TimestampsToReturn: ua.TimestampsToReturnNeither}
	for _, i := range ids {
		req.NodesToRead = append(req.NodesToRead, &ua.ReadValueID{NodeID: ua.NewNumericNodeID(0, i), AttributeID: ua.AttributeIDValue, DataEncoding: &ua.QualifiedName{}})
	}
	res, err := c.Read(ctx, req)
	if err != nil || len(res.Results) != len(ids) {
		return l
	}
	dst := []*int{&l.monitoredItems, &l.read, &l.browse, &l.historyRead}
	for i, dv := range res.Results {
		if dv == nil || dv.Status != ua.StatusOK || dv.Value == nil {
			continue
		}
		if v, ok := asInt(dv.Value.Value()); ok && v > 0 && int(v) < *dst[i] {
			*dst[i] = int(v)
		}
	}
	return l
}

// resolveAll turns config nodes into items: explicit ids directly, paths
// by browsing. only, when set, restricts to those config indexes (for
// retries). New items are read once to learn their type and whether they
// exist.
func (r *run) resolveAll(ctx context.Context, nodes []Node, only map[int]bool) error {
	var fresh []*item
	br := newBrowser(r.c, r.limits.browse)
	for i := range nodes {
		if only != nil && !only[i] {
			continue
		}
		n := &r.s.cfg.Nodes[i]
		if n.NodeID != "" {
			nid, err := parseNodeID(n.NodeID, r.c.Namespaces())
			if err != nil {
				r.s.markBad(r.out, n.NodeID, ReasonNodeUnknown, err)
				continue
			}
			it := &item{node: nid, key: nid.String(), cfgKey: n.NodeID, cfg: n, origin: n.Origin, name: n.Signal}
			if it.name == "" {
				it.name = n.NodeID // replaced by the browse name below
			}
			fresh = r.add(fresh, it)
			continue
		}
		start, _ := ua.ParseNodeID(n.StartNode)
		found, err := br.resolve(ctx, start, r.s.paths[i])
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if isConnErr(err) {
				return fmt.Errorf("browse %s: %w", n.Path, err)
			}
			r.s.markBad(r.out, n.Path, ReasonBrowseFailed, fmt.Errorf("browse path %s: %w", n.Path, err))
			continue
		}
		if len(found) == 0 {
			r.s.markBad(r.out, n.Path, ReasonNodeUnknown, fmt.Errorf("browse path %s from %s matches no variable; check it with `shopfloor browse`", n.Path, n.StartNode))
			continue
		}
		r.s.markGood(n.Path)
		for _, f := range found {
			name := f.name
			if n.Signal != "" {
				name = n.Signal
			}
			fresh = r.add(fresh, &item{node: f.id, key: f.id.String(), cfgKey: f.id.String(), cfg: n, origin: f.origin, name: name})
		}
	}
	return r.inspect(ctx, fresh)
}

func (r *run) add(fresh []*item, it *item) []*item {
	if _, dup := r.byKey[it.key]; dup {
		return fresh
	}
	r.s.mu.Lock()
	it.prev = r.s.last[it.key]
	r.s.mu.Unlock()
	it.last, it.window = it.prev, !it.prev.IsZero()
	r.byKey[it.key] = it
	r.items = append(r.items, it)
	return append(fresh, it)
}

func isConnErr(err error) bool {
	var sc ua.StatusCode
	if errors.As(err, &sc) {
		switch sc {
		case ua.StatusBadTimeout, ua.StatusBadConnectionClosed, ua.StatusBadSecureChannelClosed, ua.StatusBadSessionIDInvalid, ua.StatusBadSessionClosed, ua.StatusBadServerNotConnected, ua.StatusBadCommunicationError:
			return true
		}
		return false
	}
	return err != nil
}

// parseNodeID accepts ns=, i=, s=, g=, b= forms and nsu=<uri>;...
func parseNodeID(s string, namespaces []string) (*ua.NodeID, error) {
	if rest, ok := strings.CutPrefix(s, "nsu="); ok {
		uri, idPart, ok := strings.Cut(rest, ";")
		if !ok {
			return nil, fmt.Errorf("node id %q: nsu= needs ;i=, ;s=, ;g= or ;b= after the URI", s)
		}
		for i, ns := range namespaces {
			if ns == uri {
				return ua.ParseNodeID(fmt.Sprintf("ns=%d;%s", i, idPart))
			}
		}
		return nil, fmt.Errorf("node id %q: the server has no namespace %q", s, uri)
	}
	return ua.ParseNodeID(s)
}

// inspect reads each new item's value, data type, browse name, access
// level and Historizing attribute: it learns which exist, which are
// numeric (for deadbands and engineering units), which are enumerations,
// which keep a history (for back-fill), and the signal name of explicit
// ids.
func (r *run) inspect(ctx context.Context, items []*item) error {
	attrs := []ua.AttributeID{ua.AttributeIDValue, ua.AttributeIDDataType, ua.AttributeIDBrowseName, ua.AttributeIDAccessLevel, ua.AttributeIDHistorizing}
	per := max(1, r.limits.read/len(attrs))
	for start := 0; start < len(items); start += per {
		batch := items[start:min(len(items), start+per)]
		req := &ua.ReadRequest{TimestampsToReturn: ua.TimestampsToReturnNeither}
		for _, it := range batch {
			for _, a := range attrs {
				req.NodesToRead = append(req.NodesToRead, &ua.ReadValueID{NodeID: it.node, AttributeID: a, DataEncoding: &ua.QualifiedName{}})
			}
		}
		res, err := r.c.Read(ctx, req)
		if err != nil {
			return fmt.Errorf("read %d nodes: %w", len(batch), err)
		}
		if len(res.Results) != len(req.NodesToRead) {
			return fmt.Errorf("read %d attributes: the server answered %d", len(req.NodesToRead), len(res.Results))
		}
		var numbers []numberNode
		for i, it := range batch {
			got := res.Results[i*len(attrs) : (i+1)*len(attrs)]
			v, dt, bn, al, hz := got[0], got[1], got[2], got[3], got[4]
			if reason := badReason(v.Status); reason != "" {
				it.bad = true
				r.s.markBad(r.out, it.cfgKey, reason, fmt.Errorf("node %s: %w", it.key, v.Status))
				continue
			}
			r.s.markGood(it.cfgKey)
			it.bad = false
			if it.cfg.NodeID != "" && it.cfg.Signal == "" && bn.Status == ua.StatusOK && bn.Value != nil {
				if q, ok := bn.Value.Value().(*ua.QualifiedName); ok && q.Name != "" {
					it.name = q.Name
				}
			}
			it.history = false
			if hz.Status == ua.StatusOK && hz.Value != nil {
				it.history, _ = hz.Value.Value().(bool)
			}
			if al.Status == ua.StatusOK && al.Value != nil {
				if lvl, ok := asInt(al.Value.Value()); ok && lvl&int64(ua.AccessLevelTypeHistoryRead) != 0 {
					it.history = true
				}
			}
			if v.Value == nil {
				continue
			}
			switch v.Value.Type() {
			case ua.TypeIDSByte, ua.TypeIDByte, ua.TypeIDInt16, ua.TypeIDUint16, ua.TypeIDInt32, ua.TypeIDUint32, ua.TypeIDInt64, ua.TypeIDUint64, ua.TypeIDFloat, ua.TypeIDDouble:
				it.numeric = true
			}
			if !it.numeric {
				continue
			}
			// Numbers may carry EngineeringUnits (an AnalogItem) and,
			// Int32 and UInt32 ones, enumeration names.
			n := numberNode{it: it, enum: v.Value.Type() == ua.TypeIDInt32 || v.Value.Type() == ua.TypeIDUint32}
			if n.enum && dt.Status == ua.StatusOK && dt.Value != nil {
				n.dataType, _ = dt.Value.Value().(*ua.NodeID)
			}
			numbers = append(numbers, n)
		}
		if err := r.readProperties(ctx, numbers); err != nil {
			return err
		}
	}
	return nil
}

// Property browse names readProperties looks for.
const (
	propEnumStrings      = "EnumStrings"
	propEnumValues       = "EnumValues"
	propEngineeringUnits = "EngineeringUnits"
)

// numberNode is a numeric variable whose properties are to be read.
type numberNode struct {
	it       *item
	enum     bool       // Int32 or UInt32: may be an enumeration
	dataType *ua.NodeID // its data type, when enum
}

// readProperties reads the properties of numeric variables: the
// EngineeringUnits of an AnalogItem, EnumStrings / EnumValues of a
// MultiStateDiscrete, and those of an enumeration data type.
func (r *run) readProperties(ctx context.Context, numbers []numberNode) error {
	if len(numbers) == 0 {
		return nil
	}
	type probe struct {
		it    *item
		start *ua.NodeID
		want  []string // in order of precedence
	}
	var probes []probe
	for _, n := range numbers {
		want := []string{propEngineeringUnits}
		if n.enum {
			want = append(want, propEnumStrings, propEnumValues)
		}
		probes = append(probes, probe{n.it, n.it.node, want})
		// A built-in data type (ns 0, up to i=30) has no names.
		if dt := n.dataType; dt != nil && !(dt.Namespace() == 0 && dt.IntID() <= 30) {
			probes = append(probes, probe{n.it, dt, []string{propEnumStrings, propEnumValues}})
		}
	}
	// Browse for the properties rather than TranslateBrowsePaths: every
	// server has Browse, and gopcua drops the connection on any service
	// fault, so an unsupported service must not be asked.
	type found struct {
		it   *item
		prop string
		node *ua.NodeID
	}
	var props []found
	per := max(1, r.limits.browse)
	for start := 0; start < len(probes); start += per {
		batch := probes[start:min(len(probes), start+per)]
		req := &ua.BrowseRequest{RequestedMaxReferencesPerNode: 100}
		for _, p := range batch {
			req.NodesToBrowse = append(req.NodesToBrowse, &ua.BrowseDescription{
				NodeID:          p.start,
				BrowseDirection: ua.BrowseDirectionForward,
				ReferenceTypeID: ua.NewNumericNodeID(0, id.HasProperty),
				IncludeSubtypes: true,
				NodeClassMask:   uint32(ua.NodeClassVariable),
				ResultMask:      uint32(ua.BrowseResultMaskBrowseName),
			})
		}
		res, err := r.c.Browse(ctx, req)
		if err != nil {
			return fmt.Errorf("browse properties of %d nodes: %w", len(batch), err)
		}
		for i, br := range res.Results {
			if i >= len(batch) || br == nil || br.StatusCode != ua.StatusOK {
				continue
			}
			for _, want := range batch[i].want {
				for _, ref := range br.References {
					if ref != nil && ref.BrowseName != nil && ref.BrowseName.Name == want && ref.NodeID != nil {
						props = append(props, found{batch[i].it, want, ref.NodeID.NodeID})
						break
					}
				}
			}
		}
	}
	per = max(1, r.limits.read)
	for start := 0; start < len(props); start += per {
		batch := props[start:min(len(props), start+per)]
		read := &ua.ReadRequest{TimestampsToReturn: ua.TimestampsToReturnNeither}
		for _, p := range batch {
			read.NodesToRead = append(read.NodesToRead, &ua.ReadValueID{NodeID: p.node, AttributeID: ua.AttributeIDValue, DataEncoding: &ua.QualifiedName{}})
		}
		vals, err := r.c.Read(ctx, read)
		if err != nil {
			return fmt.Errorf("read %d properties: %w", len(batch), err)
		}
		for i, dv := range vals.Results {
			if i >= len(batch) || dv == nil || dv.Status != ua.StatusOK {
				continue
			}
			// The first name found wins: the variable's own before its
			// data type's, EnumStrings before EnumValues.
			p := batch[i]
			switch p.prop {
			case propEngineeringUnits:
				if p.it.unit == "" {
					p.it.unit = unitFromEU(dv.Value)
				}
			case propEnumStrings:
				if p.it.enums == nil {
					p.it.enums = enumFromStrings(dv.Value)
				}
			case propEnumValues:
				if p.it.enums == nil {
					p.it.enums = enumFromValues(dv.Value)
				}
			}
		}
	}
	return nil
}

// subscribe creates the subscription and monitors every good item.
func (r *run) subscribe(ctx context.Context) error {
	r.notify = make(chan *opcua.PublishNotificationData, 256)
	sub, err := r.c.Subscribe(ctx, &opcua.SubscriptionParameters{Interval: r.s.cfg.PublishingInterval}, r.notify)
	if err != nil {
		if errors.Is(err, ua.StatusBadServiceUnsupported) {
			return fmt.Errorf("create subscription: %w; the server has no subscriptions: set mode: poll", err)
		}
		return fmt.Errorf("create subscription: %w", err)
	}
	r.sub = sub
	r.s.rememberSub(sub.SubscriptionID)
	return r.monitor(ctx, r.items)
}

func (r *run) itemRequest(handle int, it *item, withFilter bool) *ua.MonitoredItemCreateRequest {
	p := &ua.MonitoringParameters{
		ClientHandle:     uint32(handle),
		SamplingInterval: float64(it.cfg.SamplingInterval) / float64(time.Millisecond),
		QueueSize:        it.cfg.QueueSize,
		DiscardOldest:    true,
	}
	if withFilter && it.cfg.Deadband != nil && it.numeric {
		typ := ua.DeadbandTypeAbsolute
		if it.cfg.Deadband.Type == DeadbandPercent {
			typ = ua.DeadbandTypePercent
		}
		p.Filter = ua.NewExtensionObject(&ua.DataChangeFilter{
			Trigger:       ua.DataChangeTriggerStatusValue,
			DeadbandType:  uint32(typ),
			DeadbandValue: it.cfg.Deadband.Value,
		})
	}
	return &ua.MonitoredItemCreateRequest{
		ItemToMonitor:       &ua.ReadValueID{NodeID: it.node, AttributeID: ua.AttributeIDValue, DataEncoding: &ua.QualifiedName{}},
		MonitoringMode:      ua.MonitoringModeReporting,
		RequestedParameters: p,
	}
}

func filterRefused(s ua.StatusCode) bool {
	switch s {
	case ua.StatusBadFilterNotAllowed, ua.StatusBadMonitoredItemFilterUnsupported, ua.StatusBadDeadbandFilterInvalid, ua.StatusBadMonitoredItemFilterInvalid:
		return true
	}
	return false
}

// monitor adds items in batches no larger than the server's
// MaxMonitoredItemsPerCall. An item the server refuses is marked bad; a
// deadband the server refuses is dropped and the item created without it.
func (r *run) monitor(ctx context.Context, items []*item) error {
	handles := make(map[*item]int, len(r.items))
	for i, it := range r.items {
		handles[it] = i
	}
	var todo []*item
	for _, it := range items {
		if !it.bad && it.monID == 0 {
			todo = append(todo, it)
		}
	}
	per := max(1, r.limits.monitoredItems)
	withFilter := true
	for len(todo) > 0 {
		var retry []*item
		for start := 0; start < len(todo); start += per {
			batch := todo[start:min(len(todo), start+per)]
			reqs := make([]*ua.MonitoredItemCreateRequest, len(batch))
			for i, it := range batch {
				reqs[i] = r.itemRequest(handles[it], it, withFilter)
			}
			res, err := r.sub.Monitor(ctx, ua.TimestampsToReturnBoth, reqs...)
			if err != nil {
				return fmt.Errorf("create %d monitored items: %w", len(batch), err)
			}
			if res.ResponseHeader != nil && res.ResponseHeader.ServiceResult != ua.StatusOK {
				return fmt.Errorf("create %d monitored items: %w", len(batch), res.ResponseHeader.ServiceResult)
			}
			for i, it := range batch {
				if i >= len(res.Results) {
					break
				}
				st := res.Results[i].StatusCode
				switch {
				case st == ua.StatusOK || Quality(st) != collector.QualityBad:
					it.monID = res.Results[i].MonitoredItemID
				case withFilter && filterRefused(st) && it.cfg.Deadband != nil:
					r.s.log.Warn("the server refused the deadband; monitoring without it (the mapping rule's deadband still applies)", "node", it.key, "signal", it.origin+"/"+it.name, "status", st)
					retry = append(retry, it)
				default:
					reason := badReason(st)
					if reason == "" {
						reason = ReasonBadStatus
					}
					it.bad = true
					r.s.markBad(r.out, it.cfgKey, reason, fmt.Errorf("monitor node %s: %w", it.key, st))
				}
			}
		}
		todo, withFilter = retry, false
	}
	return nil
}

// handle turns one publish into batches, one per origin.
func (r *run) handle(ctx context.Context, n *opcua.PublishNotificationData) error {
	if n.Error != nil {
		if errors.Is(n.Error, ua.StatusBadNoSubscription) || errors.Is(n.Error, ua.StatusBadTimeout) {
			return nil
		}
		if r.c.State() != opcua.Connected {
			return fmt.Errorf("publish: %w", n.Error)
		}
		if errors.Is(n.Error, ua.StatusBadSubscriptionIDInvalid) || errors.Is(n.Error, ua.StatusBadSessionIDInvalid) {
			return fmt.Errorf("publish: the server dropped our subscription: %w", n.Error)
		}
		r.s.log.Warn("publish failed", "endpoint", r.s.cfg.Endpoint, "err", n.Error)
		return nil
	}
	dc, ok := n.Value.(*ua.DataChangeNotification)
	if !ok {
		return nil // status changes and keep-alives carry no data
	}
	now := time.Now()
	values := make([]itemValue, 0, len(dc.MonitoredItems))
	for _, mi := range dc.MonitoredItems {
		if mi == nil || int(mi.ClientHandle) >= len(r.items) {
			continue
		}
		values = append(values, itemValue{r.items[mi.ClientHandle], mi.Value})
	}
	return r.emit(ctx, values, now, false)
}

type itemValue struct {
	it *item
	dv *ua.DataValue
}

// emit converts values and emits them grouped by origin, in first-seen
// order, so that every batch has one asset. history marks values read by
// the back-fill: they say nothing about the node's state now, so they
// neither mark it bad nor good.
func (r *run) emit(ctx context.Context, values []itemValue, now time.Time, history bool) error {
	var origins []string
	groups := map[string][]collector.Sample{}
	type stamp struct {
		it *item
		t  time.Time
	}
	var stamps []stamp
	for _, v := range values {
		it := v.it
		if !history {
			if v.dv != nil {
				if reason := badReason(v.dv.Status); reason != "" {
					if !it.bad {
						it.bad = true
						r.s.markBad(r.out, it.cfgKey, reason, fmt.Errorf("node %s: %w", it.key, v.dv.Status))
					}
					continue
				}
			}
			if it.bad {
				it.bad = false
				r.s.markGood(it.cfgKey)
			}
		}
		t := sampleTime(v.dv, time.Time{})
		if it.emitted(t, history) {
			continue
		}
		g, seen := groups[it.origin]
		if !seen {
			origins = append(origins, it.origin)
		}
		n := len(g)
		g, err := Convert(g, it.name, v.dv, it.enums, now)
		if err != nil {
			r.out.Bad(ReasonUnsupportedType, fmt.Errorf("opcua %s: node %s: %w", r.s.cfg.Endpoint, it.key, err))
		}
		for i := n; i < len(g); i++ {
			g[i].Unit = it.unit
		}
		groups[it.origin] = g
		if !t.IsZero() {
			stamps = append(stamps, stamp{it, t})
		}
	}
	for _, o := range origins {
		if len(groups[o]) == 0 {
			continue
		}
		if err := r.out.Emit(ctx, collector.Batch{Origin: o, Samples: groups[o]}); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("the collector refused a batch: %w", err)
		}
	}
	// Only what the collector took counts as emitted.
	for _, st := range stamps {
		if st.t.After(st.it.last) {
			st.it.last = st.t
		}
		if history && st.t.After(st.it.histEnd) {
			st.it.histEnd = st.t
		}
	}
	return nil
}

// emitted reports whether a value stamped t was emitted already, so that
// a reconnect adds no duplicates: a back-fill value no newer than what
// the previous connection emitted or than what this back-fill emitted,
// or a live value within the window the previous connection and the
// back-fill covered (the current value re-read at reconnection, or one
// the back-fill read). The first live value outside the window closes
// it: from then on the server's live values are taken as they come, even
// one from a clock set back. A value without a timestamp is never a
// duplicate.
func (it *item) emitted(t time.Time, history bool) bool {
	switch {
	case t.IsZero():
		return false
	case history:
		return !t.After(it.prev) || !t.After(it.histEnd)
	case !it.window:
		return false
	}
	end := it.prev
	if it.histEnd.After(end) {
		end = it.histEnd
	}
	if !t.Before(it.prev) && !t.After(end) {
		return true
	}
	it.window = false
	return false
}

// poll reads every good item once, in batches within MaxNodesPerRead.
func (r *run) poll(ctx context.Context) error {
	var good []*item
	for _, it := range r.items {
		if !it.bad {
			good = append(good, it)
		}
	}
	per := max(1, r.limits.read)
	for start := 0; start < len(good); start += per {
		batch := good[start:min(len(good), start+per)]
		req := &ua.ReadRequest{TimestampsToReturn: ua.TimestampsToReturnBoth}
		for _, it := range batch {
			req.NodesToRead = append(req.NodesToRead, &ua.ReadValueID{NodeID: it.node, AttributeID: ua.AttributeIDValue, DataEncoding: &ua.QualifiedName{}})
		}
		res, err := r.c.Read(ctx, req)
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		values := make([]itemValue, 0, len(batch))
		for i, it := range batch {
			if i < len(res.Results) {
				values = append(values, itemValue{it, res.Results[i]})
			}
		}
		if err := r.emit(ctx, values, time.Now(), false); err != nil {
			return err
		}
	}
	return nil
}

// retryBad tries the bad nodes and patterns again: patterns are browsed
// anew, bad items re-read and, when good, monitored.
func (r *run) retryBad(ctx context.Context) error {
	bad := map[string]bool{}
	for _, b := range r.s.BadNodes() {
		bad[b.Node] = true
	}
	if len(bad) == 0 {
		return nil
	}
	only := map[int]bool{}
	for i, n := range r.s.cfg.Nodes {
		if bad[n.Path] || bad[n.NodeID] {
			only[i] = true
		}
	}
	var again []*item
	for _, it := range r.items {
		if it.bad {
			again = append(again, it)
		}
	}
	if err := r.inspect(ctx, again); err != nil {
		return err
	}
	before := len(r.items)
	if err := r.resolveAll(ctx, r.s.cfg.Nodes, only); err != nil {
		return err
	}
	if r.sub != nil {
		return r.monitor(ctx, append(again, r.items[before:]...))
	}
	return nil
}
