package mqtt

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
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
	c, received := pipe()
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
	if got := received(); !bytes.Equal(got, want.Bytes()) {
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

// TestDirectAckWritesOnePuback: a directAck's Ack puts exactly the PUBACK
// paho would send (type 4, length 2, the message id) on its connection,
// once however often it is called, and a QoS 1 message that is never
// acknowledged puts nothing there.
func TestDirectAckWritesOnePuback(t *testing.T) {
	c, received := pipe()
	acked := &directAck{Message: idMessage(0x1234), conn: c}
	acked.Ack()
	acked.Ack()
	_ = &directAck{Message: idMessage(0x0777), conn: c} // delivered, not acknowledged
	(&directAck{Message: idMessage(0x00ff), conn: c}).Ack()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if got, want := received(), []byte{0x40, 2, 0x12, 0x34, 0x40, 2, 0x00, 0xff}; !bytes.Equal(got, want) {
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
// directAck (those of a retiring session are wrapped).
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
	dup := &directAck{Message: idMessage(3), conn: c1}
	batch := []paho.Message{
		&directAck{Message: idMessage(1), conn: c1},
		&directAck{Message: idMessage(2), conn: c2},
		dup,
		countingMessage{idMessage(9), &other},
		&directAck{Message: idMessage(4), conn: c2},
		dup, // the same message twice: one PUBACK
		&directAck{Message: idMessage(0x0105), conn: c1},
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
