package opcua

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/gopcua/opcua"
	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"

	"github.com/noordoostpolder/shopfloor/collector"
)

// historyValuesPerNode bounds the values per node in one HistoryRead
// answer; the rest follows through continuation points. A thousand
// DataValues are some 30 kB, within any server's message size.
const historyValuesPerNode = 1000

// backfillGroupSpan: nodes whose back-fill starts lie within this span
// are read in one request, from the earliest start, and each drops what
// it emitted already. Reading every node from its own start would cost a
// request per node; reading all from the earliest start would read an
// hour of a fast counter because a setpoint beside it last changed an
// hour ago.
const backfillGroupSpan = 10 * time.Second

// maxEmptyHistoryRounds: a server may answer a continuation point with no
// values and a new continuation point while it is still searching. After
// this many in a row the node's back-fill stops, so a server that hands
// out continuation points forever cannot hold up the source.
const maxEmptyHistoryRounds = 10

// errStopBackfill ends a back-fill that cannot go on (a timeout, a
// connection error) without ending the Run: the watchdog and the
// connection state notice a dead connection on their own.
var errStopBackfill = errors.New("back-fill stopped")

// backfill reads, for every good node that keeps a history and was read
// by an earlier Run of this source, what the server recorded since the
// newest value emitted for it (at most backfill_max back) up to the
// server's current time, and emits it like live values. A server or node
// that refuses HistoryRead is skipped, logged once, and not asked again
// while the source lives. It returns an error wrapping errRedial when
// gopcua dropped the connection over a refusal, and an error when the
// collector refused a batch.
func (r *run) backfill(ctx context.Context) error {
	r.s.mu.Lock()
	refused, downSince := r.s.historyRefused, r.s.downSince
	r.s.downSince = time.Time{}
	var todo []*item
	for _, it := range r.items {
		if !it.bad && it.history && !it.prev.IsZero() && !r.s.historyOff[it.key] {
			todo = append(todo, it)
		}
	}
	r.s.mu.Unlock()
	if !r.s.cfg.BackfillEnabled() || refused || len(todo) == 0 {
		return nil
	}
	end := serverTime(ctx, r.c)
	floor := end.Add(-r.s.cfg.BackfillMax)
	if !downSince.IsZero() && time.Since(downSince) > r.s.cfg.BackfillMax {
		r.s.log.Warn("the connection was down longer than backfill_max: older values are not read", "endpoint", r.s.cfg.Endpoint,
			"down", time.Since(downSince).Round(time.Second), "backfill_max", r.s.cfg.BackfillMax)
	}
	type job struct {
		it    *item
		start time.Time
	}
	jobs := make([]job, 0, len(todo))
	for _, it := range todo {
		start := it.prev
		if start.Before(floor) {
			start = floor
		}
		if start.Before(end) {
			jobs = append(jobs, job{it, start})
		}
	}
	if len(jobs) == 0 {
		return nil
	}
	sort.SliceStable(jobs, func(i, j int) bool { return jobs[i].start.Before(jobs[j].start) })
	began, read := time.Now(), 0
	per := max(1, r.limits.historyRead)
	for i := 0; i < len(jobs); {
		from := jobs[i].start
		var group []*item
		for ; i < len(jobs) && len(group) < per && jobs[i].start.Sub(from) <= backfillGroupSpan; i++ {
			group = append(group, jobs[i].it)
		}
		n, err := r.readHistory(ctx, group, from, end)
		read += n
		if errors.Is(err, errStopBackfill) {
			break
		}
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
	}
	r.s.log.Info("back-filled the gap from the server's history", "endpoint", r.s.cfg.Endpoint, "nodes", len(jobs), "values", read,
		"took", time.Since(began).Round(time.Millisecond))
	return nil
}

// historyCursor is one node's progress through a HistoryRead.
type historyCursor struct {
	it    *item
	cp    []byte // continuation point; nil at first and when done
	empty int    // answers in a row without values
}

// readHistory reads the raw history of items from start to end,
// following continuation points until every node is done, and emits it.
// It returns how many values the server sent.
func (r *run) readHistory(ctx context.Context, items []*item, start, end time.Time) (int, error) {
	details := &ua.ExtensionObject{
		TypeID:       ua.NewFourByteExpandedNodeID(0, id.ReadRawModifiedDetails_Encoding_DefaultBinary),
		EncodingMask: ua.ExtensionObjectBinary,
		Value: &ua.ReadRawModifiedDetails{
			IsReadModified:   false,
			StartTime:        start,
			EndTime:          end,
			NumValuesPerNode: r.s.historyPerRead,
			ReturnBounds:     false,
		},
	}
	todo := make([]*historyCursor, len(items))
	for i, it := range items {
		todo[i] = &historyCursor{it: it}
	}
	read := 0
	for len(todo) > 0 {
		req := &ua.HistoryReadRequest{HistoryReadDetails: details, TimestampsToReturn: ua.TimestampsToReturnBoth}
		for _, c := range todo {
			req.NodesToRead = append(req.NodesToRead, &ua.HistoryReadValueID{NodeID: c.it.node, DataEncoding: &ua.QualifiedName{}, ContinuationPoint: c.cp})
		}
		res, err := r.sendHistoryRead(ctx, req)
		if err != nil {
			// The server drops continuation points of a request it
			// failed; the ones of earlier answers are still held.
			r.releaseHistory(ctx, todo)
			return read, r.historyFailed(ctx, len(todo), err)
		}
		for i, c := range todo {
			c.cp = nil
			if i < len(res.Results) && res.Results[i] != nil {
				c.cp = res.Results[i].ContinuationPoint
			}
		}
		var next []*historyCursor
		for i, c := range todo {
			if i >= len(res.Results) || res.Results[i] == nil {
				continue
			}
			hr := res.Results[i]
			if hr.StatusCode == ua.StatusBadNoData {
				continue // nothing in the range, said the Bad way
			}
			if Quality(hr.StatusCode) == collector.QualityBad {
				r.historyNodeFailed(c.it, hr.StatusCode)
				continue
			}
			var dvs []*ua.DataValue
			if hr.HistoryData != nil {
				if hd, ok := hr.HistoryData.Value.(*ua.HistoryData); ok {
					dvs = hd.DataValues
				}
			}
			read += len(dvs)
			values := make([]itemValue, len(dvs))
			for j, dv := range dvs {
				values[j] = itemValue{c.it, dv}
			}
			if err := r.emit(ctx, values, time.Now(), true); err != nil {
				r.releaseHistory(ctx, append(next, todo[i:]...))
				return read, err
			}
			if len(c.cp) == 0 {
				continue
			}
			if len(dvs) == 0 {
				c.empty++
			} else {
				c.empty = 0
			}
			if c.empty >= maxEmptyHistoryRounds {
				r.s.log.Warn("the server keeps answering without values; back-fill of the node stopped", "node", c.it.key, "rounds", c.empty)
				r.releaseHistory(ctx, []*historyCursor{c})
				continue
			}
			next = append(next, c)
		}
		if ctx.Err() != nil {
			r.releaseHistory(ctx, next)
			return read, nil
		}
		todo = next
	}
	return read, nil
}

func (r *run) sendHistoryRead(ctx context.Context, req *ua.HistoryReadRequest) (*ua.HistoryReadResponse, error) {
	var res *ua.HistoryReadResponse
	err := r.c.Send(ctx, req, func(v ua.Response) error {
		var ok bool
		if res, ok = v.(*ua.HistoryReadResponse); !ok {
			return fmt.Errorf("HistoryRead: unexpected response %T", v)
		}
		return nil
	})
	return res, err
}

// releaseHistory tells the server to drop the continuation points of
// cursors not followed to their end. It is bounded like the goodbye and
// works after ctx ended, since a back-fill cut short by shutdown must
// not leave them to the session's end.
func (r *run) releaseHistory(ctx context.Context, cursors []*historyCursor) {
	req := &ua.HistoryReadRequest{
		// The details must be there even though nothing is read.
		HistoryReadDetails: &ua.ExtensionObject{
			TypeID:       ua.NewFourByteExpandedNodeID(0, id.ReadRawModifiedDetails_Encoding_DefaultBinary),
			EncodingMask: ua.ExtensionObjectBinary,
			Value:        &ua.ReadRawModifiedDetails{},
		},
		TimestampsToReturn:        ua.TimestampsToReturnBoth,
		ReleaseContinuationPoints: true,
	}
	for _, c := range cursors {
		if len(c.cp) > 0 {
			req.NodesToRead = append(req.NodesToRead, &ua.HistoryReadValueID{NodeID: c.it.node, DataEncoding: &ua.QualifiedName{}, ContinuationPoint: c.cp})
		}
	}
	if len(req.NodesToRead) == 0 || r.dead {
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(closeTimeout, r.s.cfg.RequestTimeout))
	defer cancel()
	if _, err := r.sendHistoryRead(rctx, req); err != nil {
		r.s.log.Debug("releasing history continuation points failed", "endpoint", r.s.cfg.Endpoint, "err", err)
		if isConnErr(err) {
			r.dead = true
		}
	}
}

// historyFailed decides what a failed HistoryRead means. A service
// fault says the server does not do HistoryRead (or not like this): the
// back-fill is off for the source's life, and since gopcua drops the
// connection on any service fault, the source connects again at once
// (errRedial). Anything else (a timeout, a broken connection) stops this
// back-fill only.
func (r *run) historyFailed(ctx context.Context, nodes int, err error) error {
	if ctx.Err() != nil {
		return errStopBackfill
	}
	var sc ua.StatusCode
	if errors.As(err, &sc) && !isConnErr(err) {
		r.s.mu.Lock()
		r.s.historyRefused = true
		r.s.mu.Unlock()
		r.s.log.Info("the server refuses HistoryRead: gaps are not back-filled from this server while the agent runs", "endpoint", r.s.cfg.Endpoint, "status", sc)
		return fmt.Errorf("HistoryRead refused with %w; connecting again: %w", sc, errRedial)
	}
	r.s.log.Warn("back-fill stopped: HistoryRead failed; the gap stays", "endpoint", r.s.cfg.Endpoint, "nodes", nodes, "err", err)
	return errStopBackfill
}

// historyNodeFailed handles a Bad result for one node. Statuses that
// may pass (a timeout, lost continuation points, a busy server) skip the
// node this time; any other says the node has no history this agent may
// read, and it is not asked again while the source lives.
func (r *run) historyNodeFailed(it *item, st ua.StatusCode) {
	switch st {
	case ua.StatusBadTimeout, ua.StatusBadContinuationPointInvalid, ua.StatusBadNoContinuationPoints,
		ua.StatusBadTooManyOperations, ua.StatusBadResourceUnavailable, ua.StatusBadOutOfMemory, ua.StatusBadServerHalted:
		r.s.log.Warn("back-fill of a node failed this time; the gap stays", "node", it.key, "status", st)
		return
	}
	r.s.mu.Lock()
	r.s.historyOff[it.key] = true
	r.s.mu.Unlock()
	r.s.log.Info("the server gives no history for this node; it is not back-filled", "node", it.key, "status", st)
}

// serverTime reads the server's clock, the end of a back-fill: the
// history is stamped by the server's (or the machine's) clock, not
// ours. Our own clock when the server does not say.
func serverTime(ctx context.Context, c *opcua.Client) time.Time {
	res, err := c.Read(ctx, &ua.ReadRequest{NodesToRead: []*ua.ReadValueID{{
		NodeID: ua.NewNumericNodeID(0, id.Server_ServerStatus_CurrentTime), AttributeID: ua.AttributeIDValue, DataEncoding: &ua.QualifiedName{},
	}}})
	if err == nil && len(res.Results) == 1 && res.Results[0].Status == ua.StatusOK && res.Results[0].Value != nil {
		if t, ok := res.Results[0].Value.Value().(time.Time); ok && t.Year() > 1601 {
			return t
		}
	}
	return time.Now()
}
