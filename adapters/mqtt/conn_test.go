package mqtt

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// pipe is a bufferedConn on one end of a pipe; received returns what the
// other end read, once the connection is closed.
func pipe() (c *bufferedConn, received func() []byte) {
	a, b := net.Pipe()
	var got bytes.Buffer
	done := make(chan struct{})
	go func() { defer close(done); _, _ = io.Copy(&got, b) }()
	return newBufferedConn(a), func() []byte { <-done; return got.Bytes() }
}

// TestBufferedConnKeepsOrderAndFlushesOnClose writes from many small
// writes, as paho's PUBACKs are, and wants every byte, in order, before
// the peer sees the close.
func TestBufferedConnKeepsOrderAndFlushesOnClose(t *testing.T) {
	c, peer := pipe()
	var want bytes.Buffer
	for i := 0; i < 5000; i++ {
		p := []byte{0x40, 0x02, byte(i >> 8), byte(i)}
		want.Write(p)
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if got := peer(); !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("peer got %d bytes, want %d in order", len(got), want.Len())
	}
	if _, err := c.Write([]byte{1}); err == nil {
		t.Error("Write after Close succeeded")
	}
}

// TestBufferedConnReportsWriteErrors: once the peer is gone, writes fail
// instead of piling up.
func TestBufferedConnReportsWriteErrors(t *testing.T) {
	a, b := net.Pipe()
	c := newBufferedConn(a)
	b.Close()
	var err error
	// The error surfaces once the background write has failed.
	for deadline := time.Now().Add(5 * time.Second); err == nil && time.Now().Before(deadline); {
		_, err = c.Write([]byte("x"))
		time.Sleep(time.Millisecond)
	}
	if err == nil {
		t.Fatal("writes to a closed peer never failed")
	}
	c.Close()
}

// TestReceivedAckWritesOnePuback: a received message's Ack puts exactly
// the PUBACK paho would send (type 4, length 2, the message id) on its connection,
// once however often it is called, and a QoS 1 message that is never
// acknowledged puts nothing there.
func TestReceivedAckWritesOnePuback(t *testing.T) {
	c, peer := pipe()
	acked := &received{id: 0x1234, qos: 1, conn: c}
	acked.Ack()
	acked.Ack()
	_ = &received{id: 0x0777, qos: 1, conn: c} // delivered, not acknowledged
	(&received{id: 0x00ff, qos: 1, conn: c}).Ack()
	(&received{id: 0x0999, qos: 0, conn: c}).Ack() // QoS 0 has no PUBACK
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if got, want := peer(), []byte{0x40, 2, 0x12, 0x34, 0x40, 2, 0x00, 0xff}; !bytes.Equal(got, want) {
		t.Fatalf("connection got % x, want % x", got, want)
	}
}

// idMessage is a QoS 1 message with an id and nothing else.
type idMessage uint16

func (m idMessage) Duplicate() bool   { return false }
func (m idMessage) Qos() byte         { return 1 }
func (m idMessage) Retained() bool    { return false }
func (m idMessage) Topic() string     { return "t" }
func (m idMessage) MessageID() uint16 { return uint16(m) }
func (m idMessage) Payload() []byte   { return nil }
func (m idMessage) Ack()              { panic("paho's Ack called; the PUBACK must go straight to the connection") }

// countingMessage records paho's Ack, for messages that are not a
// *received (those of a retiring session are wrapped).
type countingMessage struct {
	idMessage
	acks *int
}

func (m countingMessage) Ack() { *m.acks++ }

// TestAckAllGroupsByConnection: a batch from two connections puts on each
// exactly its own PUBACKs, in batch order, once each, and leaves other
// messages to their own Ack.
func TestAckAllGroupsByConnection(t *testing.T) {
	c1, got1 := pipe()
	c2, got2 := pipe()
	var other int
	dup := &received{id: 3, qos: 1, conn: c1}
	batch := []paho.Message{
		&received{id: 1, qos: 1, conn: c1},
		&received{id: 2, qos: 1, conn: c2},
		dup,
		countingMessage{idMessage(9), &other},
		&received{id: 4, qos: 1, conn: c2},
		dup, // the same message twice: one PUBACK
		&received{id: 0x0105, qos: 1, conn: c1},
	}
	buf := ackAll(batch, nil)
	if cap(buf) == 0 {
		t.Error("no scratch buffer returned for reuse")
	}
	for i, m := range batch {
		if m != nil {
			t.Errorf("batch[%d] still holds a message", i)
		}
	}
	ackAll([]paho.Message{dup}, buf) // acknowledged already
	c1.Close()
	c2.Close()
	if got, want := got1(), []byte{0x40, 2, 0, 1, 0x40, 2, 0, 3, 0x40, 2, 1, 5}; !bytes.Equal(got, want) {
		t.Errorf("connection 1 got % x, want % x", got, want)
	}
	if got, want := got2(), []byte{0x40, 2, 0, 2, 0x40, 2, 0, 4}; !bytes.Equal(got, want) {
		t.Errorf("connection 2 got % x, want % x", got, want)
	}
	if other != 1 {
		t.Errorf("the wrapped message was acknowledged %d times, want 1", other)
	}
}

// chunked hands out its stream a few bytes per Read, as a socket may.
type chunked struct {
	b []byte
	n int
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	c.n = c.n%7 + 1
	n := copy(p[:min(len(p), c.n)], c.b)
	c.b = c.b[n:]
	return n, nil
}

// describe is one packet as text, the same for paho's packets and for the
// messages a bufferedConn takes itself.
func describe(cp packets.ControlPacket) string {
	if p, ok := cp.(*packets.PublishPacket); ok {
		return describeMessage(&received{topic: p.TopicName, payload: p.Payload, qos: p.Qos, id: p.MessageID, dup: p.Dup, retained: p.Retain})
	}
	return cp.String()
}

// describeSkipping is describe for a connection that skips payloads over
// maxPayload bytes.
func describeSkipping(cp packets.ControlPacket, maxPayload int) string {
	if p, ok := cp.(*packets.PublishPacket); ok && p.Qos < 2 && maxPayload > 0 && len(p.Payload) > maxPayload {
		return describeMessage(&received{topic: p.TopicName, skipped: len(p.Payload), qos: p.Qos, id: p.MessageID, dup: p.Dup, retained: p.Retain})
	}
	return describe(cp)
}

func describeMessage(m paho.Message) string {
	payload := fmt.Sprintf("payload=%q", m.Payload())
	if n := PayloadSkipped(m); n > 0 {
		payload = fmt.Sprintf("payload of %d bytes skipped", n)
	}
	return fmt.Sprintf("PUBLISH qos=%d dup=%t retain=%t id=%d topic=%q %s",
		m.Qos(), m.Duplicate(), m.Retained(), m.MessageID(), m.Topic(), payload)
}

// readAll reads packets from r with paho's reader until an error, and
// describes them in stream order, as a connection that skips payloads
// over maxPayload bytes would.
func readAll(r io.Reader, maxPayload int) ([]string, error) {
	var seq []string
	for {
		cp, err := packets.ReadPacket(r)
		if err != nil {
			return seq, err
		}
		seq = append(seq, describeSkipping(cp, maxPayload))
	}
}

// readThrough reads stream as paho would through a bufferedConn that takes
// the PUBLISH packets itself (skipping payloads over maxPayload bytes,
// unless 0), and describes in stream order both what the
// connection took and what paho read; taken counts the former. The
// messages are described only at the end, so a message whose bytes a later
// read overwrote would show.
func readThrough(stream io.Reader, maxPayload int) (seq []string, taken int, err error) {
	type item struct {
		m  *received
		cp packets.ControlPacket
	}
	var items []item
	c := &bufferedConn{r: bufio.NewReaderSize(stream, readBuffer), maxPayload: maxPayload}
	c.publish = func(m *received) { items = append(items, item{m: m}) }
	for {
		cp, rerr := packets.ReadPacket(c)
		if rerr != nil {
			err = rerr
			break
		}
		items = append(items, item{cp: cp})
	}
	for _, it := range items {
		if it.m != nil {
			seq = append(seq, describeMessage(it.m))
			taken++
		} else {
			seq = append(seq, describe(it.cp))
		}
	}
	return seq, taken, err
}

// encode writes packets with paho's encoder, the independent one.
func encode(t testing.TB, cps ...packets.ControlPacket) []byte {
	var b bytes.Buffer
	for _, cp := range cps {
		if err := cp.Write(&b); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

func publish(qos byte, id uint16, topic string, payload []byte, dup, retain bool) *packets.PublishPacket {
	p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	p.Qos, p.MessageID, p.TopicName, p.Payload, p.Dup, p.Retain = qos, id, topic, payload, dup, retain
	return p
}

// sampleStream is a broker's side of a session: acks, pings and messages
// of every QoS, payloads from empty to big bytes, and from 1000 bytes on
// the longest topic there is.
func sampleStream(t testing.TB, big int) (stream []byte, publishes int) {
	connack := packets.NewControlPacket(packets.Connack).(*packets.ConnackPacket)
	connack.SessionPresent = true
	suback := packets.NewControlPacket(packets.Suback).(*packets.SubackPacket)
	suback.MessageID, suback.ReturnCodes = 1, []byte{1, 0x80}
	unsuback := packets.NewControlPacket(packets.Unsuback).(*packets.UnsubackPacket)
	unsuback.MessageID = 2
	mid := bytes.Repeat([]byte{0xff}, 200) // a 2-byte remaining length
	stream = encode(t,
		connack,
		publish(0, 0, "factory/line-1/cnc-01/telemetry", []byte(`{"spindle_speed": 1200}`), false, false),
		publish(1, 7, "factory/line-1/cnc-02/telemetry", mid, true, true),
		suback,
		publish(1, 65535, "f/ü", bytes.Repeat([]byte("0123456789"), big/10), false, false),
		packets.NewControlPacket(packets.Pingresp),
		publish(2, 9, "factory/qos2", []byte("paho's"), false, false),
		publish(0, 0, "factory/empty", nil, false, false),
		publish(0, 0, "", []byte("no topic"), false, false),
		unsuback,
		publish(1, 1, "factory/line-1/cnc-01/telemetry", []byte(`{"spindle_speed": 1201}`), false, false),
	)
	if big < 1000 {
		return stream, 6 // for the fuzzer, which minimises what it finds
	}
	// The longest topic MQTT allows: a variable header longer than the
	// connection's read buffer.
	return append(stream, encode(t, publish(1, 2, strings.Repeat("t", 65535), []byte("long topic"), false, false))...), 7
}

// TestReadTakesPublishesAndPassesTheRest: through a bufferedConn that
// takes the messages itself, paho and the connection together see exactly
// the packets paho alone reads from the same stream, in the same order,
// however the socket splits it; the connection takes every QoS 0 and 1
// PUBLISH and nothing else.
func TestReadTakesPublishesAndPassesTheRest(t *testing.T) {
	// 20,000 bytes: a 3-byte remaining length, more than a slab's share.
	stream, publishes := sampleStream(t, 20000)
	for _, tc := range []struct {
		name       string
		r          io.Reader
		maxPayload int
	}{
		{"whole", bytes.NewReader(stream), 0},
		{"chunked", &chunked{b: stream}, 0},
		{"skipping payloads over 100 bytes", &chunked{b: stream}, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, err := readAll(bytes.NewReader(stream), tc.maxPayload)
			if err != io.EOF {
				t.Fatalf("paho alone: %v after %d packets", err, len(want))
			}
			got, taken, err := readThrough(tc.r, tc.maxPayload)
			if err != io.EOF {
				t.Errorf("ended with %v, want EOF", err)
			}
			if taken != publishes {
				t.Errorf("took %d messages, want %d", taken, publishes)
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

// TestReadRefusesMalformedPublishes: a PUBLISH that contradicts its own
// length ends the connection with an error that says so; the messages
// before it were delivered.
func TestReadRefusesMalformedPublishes(t *testing.T) {
	good := encode(t, publish(0, 0, "a", []byte("1"), false, false))
	for _, tc := range []struct {
		name   string
		packet []byte
		want   string
	}{
		{"topic longer than the packet", []byte{0x30, 4, 0, 9, 'a', 'b'}, "topic of 9 bytes in a packet of 4"},
		{"no topic length", []byte{0x30, 1, 0}, "no topic length"},
		{"QoS 1 without an identifier", []byte{0x32, 4, 0, 1, 'a', 0}, "no packet identifier"},
		{"remaining length of 5 bytes", []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x01}, "remaining length longer than 4 bytes"},
		{"cut off", []byte{0x30, 10, 0, 1, 'a'}, io.ErrUnexpectedEOF.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, taken, err := readThrough(bytes.NewReader(append(append([]byte{}, good...), tc.packet...)), 0)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
			if taken != 1 || len(got) != 1 {
				t.Errorf("delivered %d of %d packets before the bad one, want the 1 good message", taken, len(got))
			}
		})
	}
}

// TestReadSkipsOversizedPayloadsWithoutKeepingThem: a 4 MiB payload on a
// connection that keeps at most 64 KiB is read past with a small fraction
// of its size allocated (paho allocated it whole), and says its size.
func TestReadSkipsOversizedPayloadsWithoutKeepingThem(t *testing.T) {
	const huge = 4 << 20
	stream := encode(t,
		publish(1, 1, "factory/a", []byte("1"), false, false),
		publish(1, 2, "factory/file", bytes.Repeat([]byte{'x'}, huge), false, false),
		publish(1, 3, "factory/a", []byte("3"), false, false),
	)
	var got []*received
	c := &bufferedConn{r: bufio.NewReaderSize(bytes.NewReader(stream), readBuffer), maxPayload: 64 << 10}
	c.publish = func(m *received) { got = append(got, m) }
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := packets.ReadPacket(c); err != io.EOF {
		t.Fatalf("read ended with %v, want EOF", err)
	}
	runtime.ReadMemStats(&after)
	if len(got) != 3 {
		t.Fatalf("got %d messages, want 3", len(got))
	}
	if got[1].skipped != huge || got[1].payload != nil || got[1].id != 2 || string(got[2].payload) != "3" {
		t.Fatalf("the second message skipped %d bytes with %d kept (want %d, 0), the third has %q", got[1].skipped, len(got[1].payload), huge, got[2].payload)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > huge/8 {
		t.Errorf("allocated %d bytes reading past a payload of %d", n, huge)
	}
}

// FuzzReadMatchesPaho: for any bytes from a broker, a bufferedConn that
// takes the messages itself delivers, with paho, what paho alone would
// have read (payloads over a limit skipped, with their size), up to where either stops; it may stop sooner only at a
// remaining length that the MQTT specification calls malformed and paho
// reads anyway.
func FuzzReadMatchesPaho(f *testing.F) {
	stream, _ := sampleStream(f, 20) // small: the fuzzer minimises what it finds
	f.Add(stream)
	f.Add([]byte{0x30, 4, 0, 9, 'a', 'b'})
	f.Add([]byte{0x32, 0x80, 0x01, 0, 1, 'a', 0, 5})
	f.Add([]byte{0x36, 5, 0, 1, 'a', 0, 1, 0x20, 2, 0, 0})
	f.Fuzz(func(t *testing.T, stream []byte) {
		if declaresMoreThan(stream, 1<<20) {
			return // both would allocate it before finding the stream short
		}
		for _, maxPayload := range []int{0, 8} {
			want, _ := readAll(bytes.NewReader(stream), maxPayload)
			got, _, err := readThrough(&chunked{b: stream}, maxPayload)
			if len(got) > len(want) {
				t.Fatalf("max payload %d: delivered %d packets, paho reads %d", maxPayload, len(got), len(want))
			}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("max payload %d: packet %d: got %s, paho reads %s", maxPayload, i, got[i], want[i])
				}
			}
			if len(got) < len(want) && !strings.Contains(fmt.Sprint(err), "remaining length longer than 4 bytes") {
				t.Fatalf("max payload %d: stopped after %d of paho's %d packets: %v", maxPayload, len(got), len(want), err)
			}
		}
	})
}

// declaresMoreThan reports whether a packet header in stream, read as
// paho reads it, declares more than limit bytes.
func declaresMoreThan(stream []byte, limit int) bool {
	for len(stream) > 1 {
		length, shift, i := 0, 0, 1
		for ; i < len(stream) && i <= 4; i++ {
			length |= int(stream[i]&0x7f) << shift
			shift += 7
			if stream[i]&0x80 == 0 {
				break
			}
		}
		if length > limit {
			return true
		}
		stream = stream[min(len(stream), i+1+length):]
	}
	return false
}

// sizedReads is a net.Conn whose reads return the next of its sizes.
type sizedReads struct {
	net.Conn
	sizes []int
}

func (s *sizedReads) Read(p []byte) (int, error) {
	if len(s.sizes) == 0 {
		return 0, io.EOF
	}
	n := min(s.sizes[0], len(p))
	s.sizes = s.sizes[1:]
	return n, nil
}

// TestPacedConnWaitsAfterSmallReads: a read that found little makes the
// next one wait paceFor; a full read, the first read and a read after an
// empty one do not wait.
func TestPacedConnWaitsAfterSmallReads(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sizes []int
		waits int
	}{
		{"first read", []int{100}, 0},
		{"after a small read", []int{100, 100, 100}, 2},
		{"after full reads", []int{paceBelow, readBuffer, 100}, 0},
		{"mixed", []int{readBuffer, 100, readBuffer, paceBelow - 1, 1}, 2},
		{"after nothing", []int{0, 0, 5}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var waits []time.Duration
			c := &pacedConn{Conn: &sizedReads{sizes: tc.sizes}, sleep: func(d time.Duration) { waits = append(waits, d) }}
			buf := make([]byte, readBuffer)
			for range tc.sizes {
				if _, err := c.Read(buf); err != nil {
					t.Fatal(err)
				}
			}
			if len(waits) != tc.waits {
				t.Errorf("waited %d times, want %d", len(waits), tc.waits)
			}
			for _, d := range waits {
				if d != paceFor {
					t.Errorf("waited %s, want %s", d, paceFor)
				}
			}
		})
	}
}

// BenchmarkReadPublishes reads 1000 load-test messages (QoS 1, 100
// machines) from a buffered stream: taken by the connection, as the
// sources do, and as paho alone would parse them, for comparison. paho's
// figure leaves out its hand-over between three goroutines per message,
// which cost more than the parsing.
func BenchmarkReadPublishes(b *testing.B) {
	var cps []packets.ControlPacket
	for i := range 1000 {
		payload := fmt.Appendf(nil, `{"ts":%d,"spindle_speed":%d,"spindle_load":41.5,"part_count":%d,"temperature":36.6,"program":"O1234","feed":0.25}`, 1732790000000+i, 1200+i%7, i)
		cps = append(cps, publish(1, uint16(i+1), fmt.Sprintf("factory/line-%d/cnc-%02d/telemetry", i%10, i%100), payload, false, false))
	}
	stream := encode(b, cps...)
	for _, tc := range []struct {
		name string
		read func(r io.Reader) int
	}{
		{"connection", func(r io.Reader) int {
			n := 0
			c := &bufferedConn{r: bufio.NewReaderSize(r, readBuffer)}
			c.publish = func(*received) { n++ }
			_, _ = packets.ReadPacket(c)
			return n
		}},
		{"paho", func(r io.Reader) int {
			n := 0
			br := bufio.NewReaderSize(r, readBuffer)
			for {
				if _, err := packets.ReadPacket(br); err != nil {
					return n
				}
				n++
			}
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(stream)))
			for b.Loop() {
				if n := tc.read(bytes.NewReader(stream)); n != len(cps) {
					b.Fatalf("read %d messages, want %d", n, len(cps))
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(cps)), "ns/msg")
		})
	}
}
