package mqtt

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// readBuffer is how much a connection reads per system call. paho reads
// each packet's fixed header a byte at a time straight from the socket;
// at tens of thousands of messages a second those reads were a fifth of
// the agent's CPU.
const readBuffer = 64 << 10

// coalesceBytes: below this much pending, the writer gives the goroutines
// that are about to add more one chance to do so first.
const coalesceBytes = 1 << 10

// maxPendingWrite bounds what Write holds before it waits for the socket.
const maxPendingWrite = 1 << 20

// bufferedConn is a net.Conn whose reads go through a buffer (and, for a
// connection from OpenConnectionTaking, hand the messages over before
// paho parses them) and whose writes are coalesced: the writes that pile
// up while one is on the wire go out together. Order is kept, and Close sends what is pending first. A write
// error is returned by the next Write and by Close, which is when paho
// would have learnt of it anyway: the next packet.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader

	// Read's side, used by paho's reader goroutine alone. When publish
	// is set, Read takes the PUBLISH packets itself (see takePublishes);
	// frameLeft is what paho has yet to read of the packet it is on.
	publish    func(*received)
	maxPayload int // larger payloads are skipped; 0: none are
	frameLeft  int
	topics     map[string]string
	bodies     []byte
	msgs       []received

	mu      sync.Mutex
	wake    *sync.Cond
	pending []byte
	err     error
	closing bool
	done    chan struct{}
}

func newBufferedConn(c net.Conn) *bufferedConn {
	b := &bufferedConn{Conn: c, r: bufio.NewReaderSize(c, readBuffer), done: make(chan struct{})}
	b.wake = sync.NewCond(&b.mu)
	go b.flush()
	return b
}

func (c *bufferedConn) Read(p []byte) (int, error) {
	if c.publish == nil {
		return c.r.Read(p)
	}
	if c.frameLeft == 0 {
		if err := c.takePublishes(); err != nil {
			return 0, err
		}
	}
	if len(p) > c.frameLeft {
		p = p[:c.frameLeft]
	}
	n, err := c.r.Read(p)
	c.frameLeft -= n
	return n, err
}

// Sizes of the slabs that received messages and their packets are cut
// from: one allocation for many messages instead of paho's several each.
const (
	bodySlab    = 64 << 10
	messageSlab = 256
	maxTopics   = 1 << 14 // interned topic names before the table starts afresh
)

// takePublishes hands the QoS 0 and 1 PUBLISH packets at the head of the
// stream to c.publish, up to the first packet of another kind, which it
// leaves for paho (noting its length in frameLeft). paho reads one packet
// at a time, so Read is at a packet's start whenever frameLeft is 0.
//
// paho handled every message on three goroutines in turn (its reader,
// its comms loop and its router), with a packet, a message and a copy of
// the topic allocated for each: a fifth of the agent's CPU at full speed.
// Here a message costs a slice of a slab. paho keeps everything else it
// does: CONNACK, SUBACK, PINGRESP, QoS 2 and the keepalive.
func (c *bufferedConn) takePublishes() error {
	for {
		flags, length, header, err := c.peekHeader()
		if err != nil {
			return err
		}
		if flags>>4 != 3 || (flags>>1)&3 > 1 {
			c.frameLeft = header + length
			return nil
		}
		if _, err := c.r.Discard(header); err != nil {
			return err
		}
		m, err := c.readPublish(flags, length)
		if err != nil {
			return err
		}
		c.publish(m)
	}
}

// peekHeader returns a packet's first byte, its remaining length and the
// size of its fixed header, without consuming them.
func (c *bufferedConn) peekHeader() (flags byte, length, header int, err error) {
	for header = 2; header <= 5; header++ {
		b, err := c.r.Peek(header)
		if err != nil {
			return 0, 0, 0, err
		}
		if b[header-1]&0x80 == 0 {
			for i := header - 1; i >= 1; i-- {
				length = length<<7 | int(b[i]&0x7f)
			}
			return b[0], length, header, nil
		}
	}
	return 0, 0, 0, errMalformed("remaining length longer than 4 bytes")
}

// errMalformed reports a packet the broker should never have sent; the
// connection ends, as paho would end it.
func errMalformed(what string) error {
	return fmt.Errorf("malformed MQTT packet from the broker (is an MQTT 3.1.1 broker listening there?): %s", what)
}

// readPublish reads the variable header and payload of a PUBLISH packet
// of length bytes whose first byte was flags. A payload larger than
// c.maxPayload is read past, not kept: the message arrives without it
// (see received.skipped), so that a stray file published to a subscribed
// topic costs no memory.
func (c *bufferedConn) readPublish(flags byte, length int) (*received, error) {
	if length < 2 {
		return nil, errMalformed("no topic length")
	}
	head, err := c.r.Peek(2)
	if err != nil {
		return nil, noEOF(err)
	}
	n := int(head[0])<<8 | int(head[1])
	if 2+n > length {
		return nil, errMalformed(fmt.Sprintf("topic of %d bytes in a packet of %d", n, length))
	}
	qos := (flags >> 1) & 3
	header := 2 + n
	if qos > 0 {
		header += 2
		if header > length {
			return nil, errMalformed("no packet identifier")
		}
	}
	// The variable header is read in place, unless it is longer than the
	// buffer (a topic of up to 65,535 bytes is allowed).
	var vh []byte
	if header <= c.r.Size() {
		vh, err = c.r.Peek(header)
	} else {
		vh = make([]byte, header)
		_, err = io.ReadFull(c.r, vh)
	}
	if err != nil {
		return nil, noEOF(err)
	}
	m := c.message()
	m.topic, m.qos, m.dup, m.retained, m.conn = c.topic(vh[2:2+n]), qos, flags&8 != 0, flags&1 != 0, c
	if qos > 0 {
		m.id = uint16(vh[2+n])<<8 | uint16(vh[3+n])
	}
	if header <= c.r.Size() {
		_, _ = c.r.Discard(header) // peeked: cannot fail
	}
	size := length - header
	if c.maxPayload > 0 && size > c.maxPayload {
		m.skipped = size
		if _, err := c.r.Discard(size); err != nil {
			return nil, noEOF(err)
		}
		return m, nil
	}
	m.payload = c.body(size)
	if _, err := io.ReadFull(c.r, m.payload); err != nil {
		return nil, noEOF(err)
	}
	return m, nil
}

// noEOF: a packet cut off is an unexpected end, as io.ReadFull says.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// body returns n bytes for a packet: from the slab when small.
func (c *bufferedConn) body(n int) []byte {
	if n > bodySlab/8 {
		return make([]byte, n)
	}
	if len(c.bodies) < n {
		c.bodies = make([]byte, bodySlab)
	}
	b := c.bodies[:n:n]
	c.bodies = c.bodies[n:]
	return b
}

func (c *bufferedConn) message() *received {
	if len(c.msgs) == 0 {
		c.msgs = make([]received, messageSlab)
	}
	m := &c.msgs[0]
	c.msgs = c.msgs[1:]
	return m
}

// topic interns a topic name: a machine publishes to the same few topics
// all day.
func (c *bufferedConn) topic(b []byte) string {
	if t, ok := c.topics[string(b)]; ok {
		return t
	}
	if c.topics == nil || len(c.topics) >= maxTopics {
		c.topics = make(map[string]string)
	}
	t := string(b)
	c.topics[t] = t
	return t
}

func (c *bufferedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && !c.closing && len(c.pending) >= maxPendingWrite {
		c.wake.Wait()
	}
	if c.err != nil {
		return 0, c.err
	}
	if c.closing {
		return 0, net.ErrClosed
	}
	c.pending = append(c.pending, p...)
	c.wake.Broadcast()
	return len(p), nil
}

// flush writes whatever is pending, one system call for all of it.
func (c *bufferedConn) flush() {
	defer close(c.done)
	var out []byte
	for {
		c.mu.Lock()
		for len(c.pending) == 0 && !c.closing && c.err == nil {
			c.wake.Wait()
		}
		if len(c.pending) == 0 || c.err != nil {
			c.mu.Unlock()
			return
		}
		if len(c.pending) < coalesceBytes && !c.closing {
			// Two workers may each be about to add their batch's
			// PUBACKs: give them one chance to share the system call.
			// Once only: a PUBACK held back longer slows the broker,
			// which sends only a few messages before their PUBACKs.
			c.mu.Unlock()
			runtime.Gosched()
			c.mu.Lock()
		}
		out, c.pending = c.pending, out[:0]
		c.mu.Unlock()
		_, err := c.Conn.Write(out)
		c.mu.Lock()
		if err != nil && c.err == nil {
			c.err = err
		}
		c.wake.Broadcast()
		c.mu.Unlock()
	}
}

// received is a message this source read from its connection itself
// (see takePublishes). Its PUBACK goes straight into that connection: four
// bytes appended under one lock. paho's own Ack would be the same on the
// wire (for an incoming QoS 1 message paho keeps no state beyond its
// store, which this source does not use) but per message ran a
// sync.Once, allocated a packet, formatted a store key with fmt.Sprintf
// and handed the packet to its writer goroutine. A PUBACK for a
// connection that has closed is dropped, as paho drops it; the broker
// then redelivers the message to the next session.
type received struct {
	topic         string
	payload       []byte
	skipped       int // the size of a payload not kept (see readPublish)
	id            uint16
	qos           byte
	dup, retained bool
	conn          *bufferedConn
	acked         atomic.Bool
}

// Duplicate, Qos, Retained, Topic, MessageID and Payload make received a
// paho.Message, so that messages paho delivers take the same path.
func (m *received) Duplicate() bool   { return m.dup }
func (m *received) Qos() byte         { return m.qos }
func (m *received) Retained() bool    { return m.retained }
func (m *received) Topic() string     { return m.topic }
func (m *received) MessageID() uint16 { return m.id }
func (m *received) Payload() []byte   { return m.payload }

// PayloadSkipped is the size of a payload that was too large to keep
// (see OpenConnectionTaking), and 0 for any other message.
func PayloadSkipped(m paho.Message) int {
	if r, ok := m.(*received); ok {
		return r.skipped
	}
	return 0
}

// Ack sends the PUBACK of a QoS 1 message, once.
func (m *received) Ack() {
	if m.qos == 1 && m.acked.CompareAndSwap(false, true) {
		_, _ = m.conn.Write([]byte{0x40, 2, byte(m.id >> 8), byte(m.id)})
	}
}

// ackAll acknowledges msgs and clears the slice's entries. The PUBACKs of
// the messages that came in on one buffered connection go in as one
// write: for a worker's whole batch one lock and one wake-up of that
// connection's flusher, instead of one per message. Each connection's
// PUBACKs keep the order of msgs. buf is scratch space, returned for
// reuse.
func ackAll(msgs []paho.Message, buf []byte) []byte {
	for i, m := range msgs {
		d, ok := m.(*received)
		if !ok || d.qos != 1 {
			if m != nil {
				m.Ack()
				msgs[i] = nil
			}
			continue
		}
		buf = buf[:0]
		for j := i; j < len(msgs); j++ {
			if o, ok := msgs[j].(*received); ok && o.conn == d.conn {
				msgs[j] = nil
				if o.qos == 1 && o.acked.CompareAndSwap(false, true) {
					buf = append(buf, 0x40, 2, byte(o.id>>8), byte(o.id))
				}
			}
		}
		if len(buf) > 0 {
			_, _ = d.conn.Write(buf)
		}
	}
	return buf
}

// Close sends what is pending, then closes the connection.
func (c *bufferedConn) Close() error {
	c.mu.Lock()
	c.closing = true
	c.wake.Broadcast()
	c.mu.Unlock()
	<-c.done
	err := c.Conn.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil && !errors.Is(c.err, net.ErrClosed) {
		return errors.Join(c.err, err)
	}
	return err
}

// OpenConnection dials the broker like paho does for the schemes this
// source accepts, with reads paced (over TCP and TLS; see paceFor) and
// buffered and writes coalesced (see bufferedConn); it is a
// paho.OpenConnectionFunc. The sparkplug source
// uses it too.
func OpenConnection(uri *url.URL, o paho.ClientOptions) (net.Conn, error) {
	var (
		conn net.Conn
		err  error
	)
	dialer := &net.Dialer{Timeout: o.ConnectTimeout}
	switch strings.ToLower(uri.Scheme) {
	case "tcp", "mqtt":
		conn, err = dialer.Dial("tcp", uri.Host)
		if err == nil {
			conn = pace(conn)
		}
	case "ssl", "tls", "mqtts":
		conn, err = dialTLS(dialer, uri.Host, o.TLSConfig)
	case "ws", "wss":
		u := *uri
		u.User = nil // gorilla refuses URLs with user info
		var tc *tls.Config
		if u.Scheme == "wss" {
			tc = o.TLSConfig
		}
		conn, err = paho.NewWebsocket(u.String(), tc, o.ConnectTimeout, o.HTTPHeaders, o.WebsocketOptions)
	default:
		return nil, errors.New("unknown scheme " + uri.Scheme)
	}
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", uri.Host, err)
	}
	return newBufferedConn(conn), nil
}

// Reads from the broker are paced: after a read that found less than
// paceBelow bytes, the next waits paceFor first. A reader that drains the
// socket as fast as messages arrive reads a few of them per system call
// and sleeps in the poller between; waiting a little lets a read take
// many. At 1M messages at QoS 0 that took the agent from 0.62 to 0.45 CPU
// s per 100k points, and at a steady 40,000 messages/s from 0.91 to 0.62;
// a message waits at most paceFor longer. It makes no difference at QoS
// 1, where the broker sends each connection a window of some 20 messages
// before their PUBACKs, but costs nothing there either.
const (
	paceBelow = 8 << 10
	paceFor   = 300 * time.Microsecond
)

// pacedConn is a net.Conn whose reads are paced (see paceFor).
type pacedConn struct {
	net.Conn
	last  int                 // what the last read returned
	sleep func(time.Duration) // time.Sleep; a field for the tests
}

func pace(c net.Conn) *pacedConn { return &pacedConn{Conn: c, sleep: time.Sleep} }

func (p *pacedConn) Read(b []byte) (int, error) {
	if p.last > 0 && p.last < paceBelow {
		p.sleep(paceFor)
	}
	n, err := p.Conn.Read(b)
	p.last = n
	return n, err
}

// OpenConnectionTaking is OpenConnection for a client that takes its
// messages the short way: deliver gets every QoS 0 and 1 message the
// connection reads, before paho sees it (see takePublishes), on paho's
// reader goroutine and in the order they came. Their Ack writes the
// PUBACK straight into the connection.
//
// A payload over maxPayload bytes (when it is not 0) is read past and not
// kept; PayloadSkipped tells its size.
func OpenConnectionTaking(maxPayload int, deliver func(paho.Message)) paho.OpenConnectionFunc {
	return func(uri *url.URL, o paho.ClientOptions) (net.Conn, error) {
		c, err := OpenConnection(uri, o)
		if bc, ok := c.(*bufferedConn); ok {
			bc.publish = func(m *received) { deliver(m) }
			bc.maxPayload = maxPayload
		}
		return c, err
	}
}

// dialTLS is tls.DialWithDialer with the pacing under TLS, where a read is
// a read of the socket; above it, a read returns one TLS record.
func dialTLS(dialer *net.Dialer, addr string, cfg *tls.Config) (net.Conn, error) {
	raw, err := dialer.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		cfg = &tls.Config{}
	}
	if cfg.ServerName == "" {
		cfg = cfg.Clone()
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		cfg.ServerName = host
	}
	ctx := context.Background()
	if dialer.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, dialer.Timeout)
		defer cancel()
	}
	conn := tls.Client(pace(raw), cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	return conn, nil
}
