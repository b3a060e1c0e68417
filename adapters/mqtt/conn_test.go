package mqtt

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// TestBufferedConnKeepsOrderAndFlushesOnClose writes from many small
// writes, as paho's PUBACKs are, and wants every byte, in order, before
// the peer sees the close.
func TestBufferedConnKeepsOrderAndFlushesOnClose(t *testing.T) {
	a, b := net.Pipe()
	c := newBufferedConn(a)
	var got bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _, _ = io.Copy(&got, b) }()
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
	wg.Wait()
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatalf("peer got %d bytes, want %d in order", got.Len(), want.Len())
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
