package opcua

import (
	"context"
	"fmt"
	"strings"

	"github.com/gopcua/opcua"
	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"
)

// maxDeepLevels bounds how far ** descends below where it stands.
const maxDeepLevels = 10

// child is one reference found by browsing.
type child struct {
	id      *ua.NodeID
	ns      uint16
	name    string
	class   ua.NodeClass
	typeDef *ua.NodeID
}

// browser browses with a cache, so that many patterns over one tree ask
// the server once per folder.
type browser struct {
	c     *opcua.Client
	per   int
	cache map[string][]child
}

// maxBrowsePerCall caps the nodes per Browse request below the server's
// limit: a response grows with nodes times references, and folders of
// hundreds of variables quickly exceed what a small server sends in one
// message chunk (gopcua's own server then never answers at all).
const maxBrowsePerCall = 8

func newBrowser(c *opcua.Client, per int) *browser {
	return &browser{c: c, per: max(1, min(per, maxBrowsePerCall)), cache: map[string][]child{}}
}

// children browses the hierarchical forward references of many nodes at
// once, within the server's MaxNodesPerBrowse, following continuation
// points.
func (b *browser) children(ctx context.Context, nodes []*ua.NodeID) ([][]child, error) {
	out := make([][]child, len(nodes))
	var todo []int
	for i, n := range nodes {
		if c, ok := b.cache[n.String()]; ok {
			out[i] = c
		} else {
			todo = append(todo, i)
		}
	}
	for start := 0; start < len(todo); start += b.per {
		batch := todo[start:min(len(todo), start+b.per)]
		req := &ua.BrowseRequest{RequestedMaxReferencesPerNode: 1000}
		for _, i := range batch {
			req.NodesToBrowse = append(req.NodesToBrowse, &ua.BrowseDescription{
				NodeID:          nodes[i],
				BrowseDirection: ua.BrowseDirectionForward,
				ReferenceTypeID: ua.NewNumericNodeID(0, id.HierarchicalReferences),
				IncludeSubtypes: true,
				NodeClassMask:   uint32(ua.NodeClassObject | ua.NodeClassVariable),
				ResultMask:      uint32(ua.BrowseResultMaskAll),
			})
		}
		res, err := b.c.Browse(ctx, req)
		if err != nil {
			return nil, err
		}
		if len(res.Results) != len(batch) {
			return nil, fmt.Errorf("browse %d nodes: the server answered %d", len(batch), len(res.Results))
		}
		for j, br := range res.Results {
			i := batch[j]
			if br.StatusCode != ua.StatusOK {
				// An unknown start node is the pattern's problem, not
				// the connection's.
				if len(nodes) == 1 {
					return nil, fmt.Errorf("browse %s: %w", nodes[i], br.StatusCode)
				}
				b.cache[nodes[i].String()] = nil
				continue
			}
			refs := br.References
			cp := br.ContinuationPoint
			for len(cp) > 0 {
				next, err := b.c.BrowseNext(ctx, &ua.BrowseNextRequest{ContinuationPoints: [][]byte{cp}})
				if err != nil || len(next.Results) == 0 {
					break
				}
				refs = append(refs, next.Results[0].References...)
				cp = next.Results[0].ContinuationPoint
			}
			cs := make([]child, 0, len(refs))
			for _, ref := range refs {
				if ref == nil || ref.NodeID == nil || ref.NodeID.NodeID == nil || ref.BrowseName == nil {
					continue
				}
				c := child{id: ref.NodeID.NodeID, ns: ref.BrowseName.NamespaceIndex, name: ref.BrowseName.Name, class: ref.NodeClass}
				if ref.TypeDefinition != nil {
					c.typeDef = ref.TypeDefinition.NodeID
				}
				cs = append(cs, c)
			}
			b.cache[nodes[i].String()] = cs
			out[i] = cs
		}
	}
	return out, nil
}

// found is one variable a pattern matched.
type found struct {
	id     *ua.NodeID
	name   string
	origin string // browse path of the folder holding it
}

type frontier struct {
	id   *ua.NodeID
	path []string
}

// resolve walks p from start and returns the variables it matches.
func (b *browser) resolve(ctx context.Context, start *ua.NodeID, p Path) ([]found, error) {
	front := []frontier{{id: start}}
	for si := 0; si < len(p) && len(front) > 0; si++ {
		seg := p[si]
		if seg.Deep {
			// ** : every node at any depth below (and the nodes
			// themselves) is a candidate for the next segment.
			all := append([]frontier(nil), front...)
			level := front
			for d := 0; d < maxDeepLevels && len(level) > 0; d++ {
				next, err := b.expand(ctx, level, func(c child) bool { return c.class == ua.NodeClassObject })
				if err != nil {
					return nil, err
				}
				all = append(all, next...)
				level = next
			}
			front = all
			continue
		}
		next, err := b.expand(ctx, front, func(c child) bool { return seg.matches(c.ns, c.name) })
		if err != nil {
			return nil, err
		}
		front = next
	}
	var out []found
	dedup := map[string]bool{}
	// The last level must be variables; read the node class from the
	// parent's browse result (cached).
	for _, f := range front {
		if len(f.path) == 0 || dedup[f.id.String()] {
			continue
		}
		dedup[f.id.String()] = true
		out = append(out, found{id: f.id, name: unescape(f.path[len(f.path)-1]), origin: strings.Join(f.path[:len(f.path)-1], "/")})
	}
	return b.onlyVariables(ctx, out)
}

func (b *browser) expand(ctx context.Context, front []frontier, keep func(child) bool) ([]frontier, error) {
	ids := make([]*ua.NodeID, len(front))
	for i, f := range front {
		ids[i] = f.id
	}
	kids, err := b.children(ctx, ids)
	if err != nil {
		return nil, err
	}
	var next []frontier
	for i, cs := range kids {
		for _, c := range cs {
			if keep(c) {
				p := make([]string, len(front[i].path), len(front[i].path)+1)
				copy(p, front[i].path)
				next = append(next, frontier{id: c.id, path: append(p, escapeName(c.name))})
			}
		}
	}
	return next, nil
}

// onlyVariables drops matches that are objects: a pattern names values.
func (b *browser) onlyVariables(ctx context.Context, fs []found) ([]found, error) {
	if len(fs) == 0 {
		return nil, nil
	}
	classes := map[string]ua.NodeClass{}
	for _, cs := range b.cache {
		for _, c := range cs {
			classes[c.id.String()] = c.class
		}
	}
	out := fs[:0]
	for _, f := range fs {
		if classes[f.id.String()] == ua.NodeClassVariable {
			out = append(out, f)
		}
	}
	return out, nil
}
