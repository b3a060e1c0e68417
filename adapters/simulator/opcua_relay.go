package simulator

import (
	"bytes"
	"crypto/rsa"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/gopcua/opcua/ua"
	"github.com/gopcua/opcua/uacp"
	"github.com/gopcua/opcua/uapolicy"
	"github.com/gopcua/opcua/uasc"
)

// openRelay makes gopcua's server (v0.8.0) usable with secure endpoints.
// That server starts each secure channel in mode None and only learns the
// mode from the OpenSecureChannel request, so it takes the first request,
// which a client must sign and encrypt with the server's public key, for
// plaintext, decodes garbage ("invalid node id type") and leaves the
// client waiting (gopcua uasc/secure_channel.go readChunk and
// channelInstance.verifyAndDecrypt; fixed upstream by gopcua PR #817,
// not in a release yet).
//
// The relay listens on the public endpoint and passes every connection
// to the server, which listens on loopback. Of the bytes the client
// sends, it changes only the first OpenSecureChannel of a connection when
// it is secured: it decrypts it with the server's key, verifies the
// client's signature and hands it on in the clear, as that server
// expects. The server answers it signed and encrypted, switches to the
// requested mode, and everything after (session, services, channel
// renewals) passes through untouched. A request that does not decrypt or
// verify is answered with an OPC UA error and the connection closed.
// Drop the relay when a gopcua release with that fix is in go.mod.
type openRelay struct {
	l      net.Listener
	target string // the server's loopback host:port
	key    *rsa.PrivateKey
	thumb  []byte // SHA-1 of the server certificate
	log    *slog.Logger

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// maxOpenMessage bounds a message before the channel is open (Hello,
// OpenSecureChannel): far more than a 4096-bit certificate chain needs.
const maxOpenMessage = 1 << 20

func newOpenRelay(l net.Listener, target string, cert []byte, key *rsa.PrivateKey, logger *slog.Logger) *openRelay {
	r := &openRelay{l: l, target: target, key: key, thumb: uapolicy.Thumbprint(cert), log: logger, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.accept()
	return r
}

func (r *openRelay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.l.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		if !r.track(c) {
			c.Close()
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.serve(c)
		}()
	}
}

// track registers a connection for Close; false once closed.
func (r *openRelay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *openRelay) untrack(cs ...net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range cs {
		delete(r.conns, c)
		c.Close()
	}
}

func (r *openRelay) serve(client net.Conn) {
	srv, err := net.DialTimeout("tcp", r.target, 5*time.Second)
	if err != nil || !r.track(srv) {
		if srv != nil {
			srv.Close()
		}
		r.log.Warn("opcua relay: cannot reach the server", "err", err)
		r.untrack(client)
		return
	}
	defer r.untrack(client, srv)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(client, srv)
		client.Close()
		srv.Close()
	}()
	if err := r.relayOpen(client, srv); err != nil {
		if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
			r.log.Warn("opcua relay: refused a connection", "remote", client.RemoteAddr().String(), "err", err)
		}
	} else {
		_, _ = io.Copy(srv, client)
	}
	client.Close()
	srv.Close()
	<-done
}

// relayOpen passes messages from client to srv up to and including the
// first OpenSecureChannel, which it hands on in the clear.
func (r *openRelay) relayOpen(client, srv net.Conn) error {
	for {
		msg, err := readMessage(client)
		if err != nil {
			return err
		}
		typ := string(msg[:3])
		if typ == "OPN" {
			plain, err := r.openInClear(msg)
			if err != nil {
				var code ua.StatusCode
				if !errors.As(err, &code) {
					code = ua.StatusBadSecurityChecksFailed
				}
				_ = writeError(client, code, err.Error())
				return err
			}
			msg = plain
		}
		if _, err := srv.Write(msg); err != nil {
			return err
		}
		// After a final OpenSecureChannel chunk (or anything but Hello,
		// which the server will refuse itself) the relay only copies.
		if typ != "HEL" && !(typ == "OPN" && msg[3] == 'C') {
			return nil
		}
	}
}

// readMessage reads one OPC UA TCP message: an 8-byte header with its
// size, and the rest.
func readMessage(c net.Conn) ([]byte, error) {
	hdr := make([]byte, 8)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return nil, err
	}
	size := binary.LittleEndian.Uint32(hdr[4:])
	if size < 8 || size > maxOpenMessage {
		return nil, fmt.Errorf("%s message of %d bytes before the channel is open", hdr[:3], size)
	}
	msg := make([]byte, size)
	copy(msg, hdr)
	if _, err := io.ReadFull(c, msg[8:]); err != nil {
		return nil, err
	}
	return msg, nil
}

// openInClear decrypts a secured OpenSecureChannel chunk, verifies the
// sender's signature and returns the chunk unsecured: headers, sequence
// header and request, without padding and signature. A chunk with
// security policy None is returned as it is.
func (r *openRelay) openInClear(msg []byte) ([]byte, error) {
	var m uasc.MessageChunk
	if _, err := m.Decode(msg); err != nil {
		return nil, ua.StatusBadDecodingError
	}
	h := m.AsymmetricSecurityHeader
	if h.SecurityPolicyURI == ua.SecurityPolicyURINone {
		return msg, nil
	}
	if !bytes.Equal(h.ReceiverCertificateThumbprint, r.thumb) {
		return nil, fmt.Errorf("%w: the request is encrypted for another server certificate", ua.StatusBadCertificateInvalid)
	}
	remote, err := uapolicy.PublicKey(h.SenderCertificate)
	if err != nil {
		return nil, fmt.Errorf("%w: client certificate: %v", ua.StatusBadCertificateInvalid, err)
	}
	algo, err := uapolicy.Asymmetric(h.SecurityPolicyURI, r.key, remote)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ua.StatusBadSecurityPolicyRejected, err)
	}
	hdrLen := len(msg) - len(m.Data)
	plain, err := algo.Decrypt(m.Data)
	if err != nil {
		return nil, fmt.Errorf("%w: decrypt: %v", ua.StatusBadSecurityChecksFailed, err)
	}
	// The signature covers the headers as sent and the plaintext.
	whole := append(append(make([]byte, 0, hdrLen+len(plain)), msg[:hdrLen]...), plain...)
	sigLen := algo.RemoteSignatureLength()
	if len(plain) < sigLen+1 {
		return nil, fmt.Errorf("%w: request too short", ua.StatusBadSecurityChecksFailed)
	}
	signed, sig := whole[:len(whole)-sigLen], whole[len(whole)-sigLen:]
	if err := algo.VerifySignature(signed, sig); err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ua.StatusBadSecurityChecksFailed, err)
	}
	// Padding: a size byte and that many bytes of it; with a key over
	// 2048 bits a second, high size byte follows (Part 6, 6.7.2.5).
	n := len(signed)
	pad := int(signed[n-1]) + 1
	if algo.SignatureLength() > 256 {
		pad = (int(signed[n-1])<<8 | int(signed[n-2])) + 2
	}
	if n-pad < hdrLen {
		return nil, fmt.Errorf("%w: bad padding", ua.StatusBadSecurityChecksFailed)
	}
	out := signed[:n-pad]
	binary.LittleEndian.PutUint32(out[4:8], uint32(len(out)))
	return out, nil
}

// writeError sends an OPC UA TCP Error message.
func writeError(c net.Conn, code ua.StatusCode, reason string) error {
	body, err := (&uacp.Error{ErrorCode: uint32(code), Reason: reason}).Encode()
	if err != nil {
		return err
	}
	msg := make([]byte, 8, 8+len(body))
	copy(msg, "ERRF")
	binary.LittleEndian.PutUint32(msg[4:], uint32(8+len(body)))
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, err = c.Write(append(msg, body...))
	return err
}

// Close stops accepting, drops every connection and waits for the relay's
// goroutines.
func (r *openRelay) Close() error {
	r.mu.Lock()
	r.closed = true
	err := r.l.Close()
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
	return err
}
