package mqtt

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

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

// bufferedConn is a net.Conn whose reads go through a buffer and whose
// writes are coalesced: paho writes every PUBACK on its own, a system call
// each; here the writes that pile up while one is on the wire go out
// together. Order is kept, and Close sends what is pending first. A write
// error is returned by the next Write and by Close, which is when paho
// would have learnt of it anyway: the next packet.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader

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

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

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
			// A worker acks a batch of messages one PUBACK at a time
			// through paho's writer goroutine: let it put the rest here
			// before the system call, instead of one call per PUBACK.
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

// directAck is a QoS 1 message whose PUBACK goes straight into the
// buffered connection it came in on: four bytes appended under one lock.
// paho's own Ack is equivalent on the wire (for an incoming QoS 1 message
// it keeps no state beyond its store, which this source does not use) but
// per message runs a sync.Once, allocates a packet, formats a store key
// with fmt.Sprintf and hands the packet to its writer goroutine: about a
// tenth of the agent's CPU at high QoS 1 rates. A PUBACK for a connection
// that has closed is dropped, as paho drops it; the broker then
// redelivers the message to the next session.
type directAck struct {
	paho.Message
	conn  *bufferedConn
	acked atomic.Bool
}

// Ack sends the PUBACK, once.
func (m *directAck) Ack() {
	if m.acked.CompareAndSwap(false, true) {
		id := m.MessageID()
		_, _ = m.conn.Write([]byte{0x40, 2, byte(id >> 8), byte(id)})
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
		d, ok := m.(*directAck)
		if !ok {
			if m != nil {
				m.Ack()
				msgs[i] = nil
			}
			continue
		}
		buf = buf[:0]
		for j := i; j < len(msgs); j++ {
			if o, ok := msgs[j].(*directAck); ok && o.conn == d.conn {
				msgs[j] = nil
				if o.acked.CompareAndSwap(false, true) {
					id := o.MessageID()
					buf = append(buf, 0x40, 2, byte(id>>8), byte(id))
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
// source accepts, with reads buffered and writes coalesced (see
// bufferedConn); it is a paho.OpenConnectionFunc. The sparkplug source
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
	case "ssl", "tls", "mqtts":
		conn, err = tls.DialWithDialer(dialer, "tcp", uri.Host, o.TLSConfig)
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
