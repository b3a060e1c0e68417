package opcua

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/gopcua/opcua"
	"github.com/gopcua/opcua/ua"
)

// defaultApplicationURI names this agent in its certificate and session.
func defaultApplicationURI() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	return "urn:shopfloor:" + host
}

// dial builds a client for cfg: it picks the server endpoint that matches
// the configured policy and mode, checks the server certificate against
// the trust list, and sets up the login. stateCh, when not nil, receives
// connection state changes.
func dial(ctx context.Context, cfg Config, pki *PKI, logger *slog.Logger, stateCh chan<- opcua.ConnState) (*opcua.Client, error) {
	appURI := cfg.ApplicationURI
	if appURI == "" {
		appURI = defaultApplicationURI()
	}
	cert, key, err := pki.ApplicationCertificate(appURI)
	if err != nil {
		return nil, err
	}
	policy, _, _ := policyURI(cfg.SecurityPolicy)
	mode, _ := securityMode(cfg.SecurityMode)

	gctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	eps, err := opcua.GetEndpoints(gctx, cfg.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("get endpoints: %w; check that the server runs and the endpoint URL is right", err)
	}
	var ep *ua.EndpointDescription
	var offered []string
	for _, e := range eps {
		offered = append(offered, strings.TrimPrefix(e.SecurityPolicyURI, ua.SecurityPolicyURIPrefix)+"/"+e.SecurityMode.String())
		if e.SecurityPolicyURI == policy && e.SecurityMode == mode {
			ep = e
		}
	}
	if ep == nil {
		return nil, fmt.Errorf("the server offers no endpoint with security_policy %s and security_mode %s; it offers %s", cfg.SecurityPolicy, cfg.SecurityMode, strings.Join(offered, ", "))
	}
	if policy != ua.SecurityPolicyURINone {
		if err := pki.CheckServer(ep.ServerCertificate, cfg.Endpoint, cfg.TrustOnFirstUse); err != nil {
			return nil, err
		}
	}

	opts := []opcua.Option{
		opcua.ApplicationURI(appURI),
		opcua.ApplicationName("shopfloor"),
		opcua.ProductURI("https://github.com/noordoostpolder/shopfloor"),
		opcua.SessionName("shopfloor"),
		opcua.Certificate(cert),
		opcua.PrivateKey(key),
		opcua.DialTimeout(cfg.ConnectTimeout),
		opcua.RequestTimeout(cfg.RequestTimeout),
		opcua.SessionTimeout(cfg.SessionTimeout),
		// The collector's supervisor owns reconnecting, with its
		// backoff and metrics; gopcua retrying underneath would hide
		// outages and keep subscriptions we cannot see.
		opcua.AutoReconnect(false),
	}
	if stateCh != nil {
		opts = append(opts, opcua.StateChangedCh(stateCh))
	}
	var authType ua.UserTokenType
	var userCert []byte // the certificate of a certificate login, for the hint when it is refused
	switch cfg.Auth.Method {
	case AuthUsername:
		authType = ua.UserTokenTypeUserName
		opts = append(opts, opcua.AuthUsername(cfg.Auth.Username, cfg.Auth.Password.Reveal()))
	case AuthCertificate:
		authType = ua.UserTokenTypeCertificate
		ucert, ukey := cert, key
		if cfg.Auth.CertFile != "" {
			if ucert, ukey, err = loadUserCert(cfg.Auth.CertFile, cfg.Auth.KeyFile); err != nil {
				return nil, err
			}
		}
		userCert = ucert
		opts = append(opts, opcua.AuthCertificate(ucert), opcua.AuthPrivateKey(ukey))
	default:
		authType = ua.UserTokenTypeAnonymous
		opts = append(opts, opcua.AuthAnonymous())
	}
	if !offersToken(ep, authType) {
		return nil, fmt.Errorf("the server's %s/%s endpoint does not accept %s login; choose another auth.method or security settings", cfg.SecurityPolicy, cfg.SecurityMode, cfg.Auth.Method)
	}
	// After the auth options: SecurityFromEndpoint fills the policy id
	// into the token they created.
	opts = append(opts, opcua.SecurityFromEndpoint(ep, authType))
	c, err := opcua.NewClient(cfg.Endpoint, opts...)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	cctx, cancel2 := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel2()
	if err := c.Connect(cctx); err != nil {
		_ = c.Close(context.Background())
		return nil, fmt.Errorf("connect: %w%s", err, connectHint(err, cfg.Auth, userCert, pki.CertPath()))
	}
	logger.Debug("connected", "endpoint", cfg.Endpoint, "policy", cfg.SecurityPolicy, "mode", cfg.SecurityMode, "auth", cfg.Auth.Method)
	return c, nil
}

func offersToken(ep *ua.EndpointDescription, t ua.UserTokenType) bool {
	if len(ep.UserIdentityTokens) == 0 {
		return t == ua.UserTokenTypeAnonymous
	}
	for _, p := range ep.UserIdentityTokens {
		if p.TokenType == t {
			return true
		}
	}
	return false
}

// connectHint tells the operator what to change after a refused
// connection. A refused login is explained by the login method used: a
// server that refuses a user certificate answers with the same status
// codes as one that refuses a password, so "check the password" would
// send the operator of a certificate login the wrong way.
// userCert is the certificate of a certificate login and appCertPath
// the application certificate's file.
func connectHint(err error, auth Auth, userCert []byte, appCertPath string) string {
	loginRefused := errors.Is(err, ua.StatusBadUserAccessDenied) || errors.Is(err, ua.StatusBadIdentityTokenRejected) ||
		errors.Is(err, ua.StatusBadIdentityTokenInvalid) || errors.Is(err, ua.StatusBadUserSignatureInvalid)
	switch {
	case loginRefused && auth.Method == AuthCertificate:
		which := "the user certificate " + auth.CertFile
		if auth.CertFile == "" {
			which = "the application certificate " + appCertPath + " as user certificate (auth.cert_file is empty)"
		}
		if errors.Is(err, ua.StatusBadUserSignatureInvalid) {
			return fmt.Sprintf(" (the server could not verify the token signed with %s (thumbprint %s))", which, Thumbprint(userCert))
		}
		return fmt.Sprintf(" (the server refused %s (thumbprint %s): trust it in the server's user certificate store, or set auth.cert_file and auth.key_file to a user certificate the server trusts)", which, Thumbprint(userCert))
	case loginRefused && auth.Method == AuthUsername:
		return " (check auth.username and auth.password)"
	case loginRefused:
		return " (the server refuses anonymous login: set auth.username and auth.password, or auth.method: certificate)"
	case errors.Is(err, ua.StatusBadSecurityChecksFailed), errors.Is(err, ua.StatusBadCertificateUntrusted):
		return " (the server does not trust the agent's application certificate yet: trust it in the server's certificate manager)"
	}
	return ""
}

func loadUserCert(certFile, keyFile string) ([]byte, *rsa.PrivateKey, error) {
	der, key, err := loadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("auth.cert_file/auth.key_file: %w", err)
	}
	return der, key, nil
}
