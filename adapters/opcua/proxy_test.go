package opcua

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/noordoostpolder/shopfloor/collector/collectortest"
)

// tcpProxy forwards TCP connections to a target and can break the
// network in between while the server keeps running: cut closes the
// connections and refuses new ones, silence lets connections stand but
// carries no byte (a pulled cable, a crashed switch).
type tcpProxy struct {
	ln     net.Listener
	target string

	mu          sync.Mutex
	conns       map[net.Conn]bool
	refuseUntil time.Time
	silentUntil time.Time
}

func startProxy(t testing.TB, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.pipe(c)
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
		p.cut(0)
	})
	return p
}

// endpoint is the proxy's address as an OPC UA endpoint.
func (p *tcpProxy) endpoint() string { return "opc.tcp://" + p.ln.Addr().String() }

func (p *tcpProxy) pipe(down net.Conn) {
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		_ = down.Close()
		return
	}
	p.mu.Lock()
	refused := time.Now().Before(p.refuseUntil)
	if !refused {
		p.conns[down], p.conns[up] = true, true
	}
	p.mu.Unlock()
	if refused {
		// Accepted and closed at once: to the client, a server that is
		// not there.
		_ = down.Close()
		_ = up.Close()
		return
	}
	go p.forward(up, down)
	p.forward(down, up)
}

// forward copies src to dst, dropping what arrives while silent.
func (p *tcpProxy) forward(dst, src net.Conn) {
	defer func() {
		_ = dst.Close()
		_ = src.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.silent() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *tcpProxy) silent() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return time.Now().Before(p.silentUntil)
}

// cut closes every connection and refuses new ones for d.
func (p *tcpProxy) cut(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuseUntil = time.Now().Add(d)
	for c := range p.conns {
		_ = c.Close()
	}
	clear(p.conns)
}

// silence carries no byte for d, on the connections that stand and on
// new ones, which are accepted.
func (p *tcpProxy) silence(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.silentUntil = time.Now().Add(d)
}

// timedOutput records when the source reported itself up and down.
type timedOutput struct {
	*collectortest.Output
	mu        sync.Mutex
	ups, down []time.Time
}

func (o *timedOutput) Connected(up bool, err error) {
	o.Output.Connected(up, err)
	o.mu.Lock()
	defer o.mu.Unlock()
	if up {
		o.ups = append(o.ups, time.Now())
	} else {
		o.down = append(o.down, time.Now())
	}
}

func (o *timedOutput) upTimes() []time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]time.Time(nil), o.ups...)
}

func (o *timedOutput) downTimes() []time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]time.Time(nil), o.down...)
}
