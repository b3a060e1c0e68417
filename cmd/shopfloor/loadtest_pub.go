package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"time"
)

// leanPublisher is the load generator's MQTT 3.1.1 client: it writes
// PUBLISH packets straight into a buffered TCP connection and, at QoS 1,
// counts the PUBACKs in a reader of its own. On a 2-core machine the load
// generator shares the CPU with the broker, the agent and InfluxDB; paho's
// per-message goroutines, channels and tokens cost the generator more
// than a core, which the measured path would otherwise not get.
type leanPublisher struct {
	conn   net.Conn
	w      *bufio.Writer
	qos    byte
	window chan struct{} // one slot per QoS 1 message awaiting its PUBACK
	nextID uint16
	acked  *atomic.Int64
	failed chan error
	buf    []byte
}

// leanWindow bounds the QoS 1 messages in flight per connection.
const leanWindow = 1000

func dialLeanPublisher(mqttURL, clientID string, qos byte, acked *atomic.Int64) (*leanPublisher, error) {
	addr := strings.TrimPrefix(mqttURL, "tcp://")
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	p := &leanPublisher{conn: conn, w: bufio.NewWriterSize(conn, 64<<10), qos: qos,
		window: make(chan struct{}, leanWindow), acked: acked, failed: make(chan error, 1)}
	if _, err := conn.Write(connectPacket(clientID)); err != nil {
		conn.Close()
		return nil, err
	}
	var connack [4]byte
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(conn, connack[:]); err != nil || connack[0] != 0x20 || connack[3] != 0 {
		conn.Close()
		return nil, fmt.Errorf("CONNACK %x: %v", connack, err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	go p.readAcks()
	return p, nil
}

// connectPacket is a CONNECT: MQTT 3.1.1, clean session, keep-alive 60 s.
func connectPacket(clientID string) []byte {
	body := binary.BigEndian.AppendUint16(nil, 4)
	body = append(body, "MQTT"...)
	body = append(body, 4, 0x02)
	body = binary.BigEndian.AppendUint16(body, 60)
	body = binary.BigEndian.AppendUint16(body, uint16(len(clientID)))
	body = append(body, clientID...)
	return appendPacket(nil, 0x10, body)
}

// appendPacket appends a packet: fixed header byte, remaining length,
// body.
func appendPacket(dst []byte, header byte, body []byte) []byte {
	return append(appendLength(append(dst, header), len(body)), body...)
}

// appendLength appends MQTT's variable-length remaining length.
func appendLength(dst []byte, n int) []byte {
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		dst = append(dst, b)
		if n == 0 {
			return dst
		}
	}
}

// readAcks frees a window slot for every PUBACK.
func (p *leanPublisher) readAcks() {
	r := bufio.NewReaderSize(p.conn, 64<<10)
	var pkt [4]byte
	for {
		if _, err := io.ReadFull(r, pkt[:]); err != nil {
			p.failed <- err
			return
		}
		if pkt[0] != 0x40 || pkt[1] != 2 {
			p.failed <- fmt.Errorf("unexpected packet %x from the broker", pkt)
			return
		}
		<-p.window
		p.acked.Add(1)
	}
}

// Publish writes one message. At QoS 1 it waits while the window is full,
// flushing first so the broker sees what it is to acknowledge.
func (p *leanPublisher) Publish(topic string, payload []byte) error {
	select {
	case err := <-p.failed:
		return err
	default:
	}
	body := binary.BigEndian.AppendUint16(p.buf[:0], uint16(len(topic)))
	body = append(body, topic...)
	if p.qos == 1 {
		select {
		case p.window <- struct{}{}:
		default:
			if err := p.w.Flush(); err != nil {
				return err
			}
			select {
			case p.window <- struct{}{}:
			case err := <-p.failed:
				return err
			case <-time.After(60 * time.Second):
				return errors.New("no PUBACK within 60 s")
			}
		}
		p.nextID++
		if p.nextID == 0 {
			p.nextID = 1
		}
		body = binary.BigEndian.AppendUint16(body, p.nextID)
	}
	body = append(body, payload...)
	p.buf = body
	var hdr [5]byte
	h := appendLength(append(hdr[:0], 0x30|p.qos<<1), len(body))
	if _, err := p.w.Write(h); err != nil {
		return err
	}
	if _, err := p.w.Write(body); err != nil {
		return err
	}
	if p.qos == 0 {
		p.acked.Add(1)
	}
	return nil
}

// Close flushes, waits for the outstanding PUBACKs and disconnects.
func (p *leanPublisher) Close() error {
	err := p.w.Flush()
	if p.qos == 1 && err == nil {
		deadline := time.After(60 * time.Second)
		for i := 0; i < leanWindow && err == nil; i++ {
			select {
			case p.window <- struct{}{}:
			case err = <-p.failed:
			case <-deadline:
				err = errors.New("outstanding PUBACKs did not arrive within 60 s")
			}
		}
	}
	_, _ = p.conn.Write([]byte{0xe0, 0})
	return errors.Join(err, p.conn.Close())
}

// leanSubscribe is the broker-only ceiling's subscriber (and the Sparkplug
// load's listener for rebirth requests): one connection that hands the
// topic of every PUBLISH on filter to onMessage and acknowledges QoS 1
// ones, batching its PUBACKs into one write per read. It is as cheap a
// subscriber as MQTT allows, so the ceiling is the broker's.
func leanSubscribe(mqttURL, filter string, qos byte, onMessage func(topic []byte)) (stop func(), err error) {
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(mqttURL, "tcp://"), 10*time.Second)
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriterSize(conn, 64<<10)
	sub := binary.BigEndian.AppendUint16(nil, 1)
	sub = binary.BigEndian.AppendUint16(sub, uint16(len(filter)))
	sub = append(append(sub, filter...), qos)
	if _, err := conn.Write(appendPacket(connectPacket(fmt.Sprintf("loadtest-sub-%d", time.Now().UnixNano())), 0x82, sub)); err != nil {
		conn.Close()
		return nil, err
	}
	r := bufio.NewReaderSize(conn, 256<<10)
	readPacket := func(buf []byte) (byte, []byte, error) {
		h, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n, mult := 0, 1
		for {
			b, err := r.ReadByte()
			if err != nil {
				return 0, nil, err
			}
			n += int(b&0x7f) * mult
			if b&0x80 == 0 {
				break
			}
			mult *= 128
		}
		if cap(buf) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		_, err = io.ReadFull(r, buf)
		return h, buf, err
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for _, want := range []byte{0x20, 0x90} { // CONNACK, SUBACK
		h, b, err := readPacket(nil)
		if err != nil || h != want || (want == 0x90 && (len(b) < 3 || b[2] == 0x80)) {
			conn.Close()
			return nil, fmt.Errorf("subscriber: packet %x %x: %v", h, b, err)
		}
	}
	_ = conn.SetReadDeadline(time.Time{})
	go func() {
		var buf []byte
		for {
			h, b, err := readPacket(buf)
			if err != nil {
				return
			}
			buf = b
			if h>>4 != 3 {
				continue
			}
			if len(b) >= 2 {
				if tl := int(binary.BigEndian.Uint16(b)); len(b) >= 2+tl {
					onMessage(b[2 : 2+tl])
				}
			}
			if (h>>1)&3 == 1 && len(b) >= 2 {
				tl := int(binary.BigEndian.Uint16(b))
				if len(b) >= 4+tl {
					_, _ = w.Write([]byte{0x40, 2, b[2+tl], b[3+tl]})
				}
			}
			if r.Buffered() == 0 {
				if w.Flush() != nil {
					return
				}
			}
		}
	}()
	return func() { _, _ = conn.Write([]byte{0xe0, 0}); conn.Close() }, nil
}
