package hub

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/dsproxy/dsproxy/hub/registry"
	"github.com/dsproxy/dsproxy/internal/sas"
	"github.com/dsproxy/dsproxy/internal/wire"
)

// principal is who a request's SAS token proves the caller to be.
type principal struct {
	policy   string // policy name; "" for a device
	deviceID string // device ID for a device token
	rights   registry.Rights
}

func (p principal) String() string {
	if p.policy != "" {
		return p.policy
	}
	return "device:" + p.deviceID
}

// apiError is a failed request, rendered as an Azure-style JSON error.
type apiError struct {
	status int
	code   int
	name   string
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func errUnauthorized(msg string) *apiError {
	return &apiError{http.StatusUnauthorized, wire.CodeUnauthorized, "IotHubUnauthorizedAccess", msg}
}

func errForbidden(msg string) *apiError {
	return &apiError{http.StatusForbidden, wire.CodeForbidden, "IotHubUnauthorizedAccess", msg}
}

func errBadRequest(msg string) *apiError {
	return &apiError{http.StatusBadRequest, wire.CodeBadRequest, "ArgumentInvalid", msg}
}

func wireNotFound(msg string) *apiError {
	return &apiError{http.StatusNotFound, wire.CodeDeviceNotFound, "NotFound", msg}
}

// authenticate checks the request's SAS token and returns who it proves
// the caller to be. target is the resource path the request acts on
// ("/devices/{id}", or "" for the hub as a whole); the token's resource
// must cover it.
func (s *Server) authenticate(ctx context.Context, r *http.Request, target string) (principal, *apiError) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return principal{}, errUnauthorized("no Authorization header: send a SharedAccessSignature token")
	}
	tok, err := sas.ParseToken(h)
	if err != nil {
		return principal{}, errUnauthorized(fmt.Sprintf("malformed SAS token: %v", err))
	}
	if err := tok.Covers(s.hostNames(), target); err != nil {
		return principal{}, errUnauthorized(fmt.Sprintf("token for %q does not cover this request on hub %s: %v", tok.Resource, s.addr, err))
	}
	now := time.Now()
	if tok.KeyName != "" {
		pol, err := s.reg.GetPolicy(ctx, tok.KeyName)
		if errors.Is(err, registry.ErrNotFound) {
			return principal{}, errUnauthorized(fmt.Sprintf("no shared access policy %q", tok.KeyName))
		}
		if err != nil {
			return principal{}, &apiError{http.StatusInternalServerError, wire.CodeInternal, "ServerError", "registry unavailable"}
		}
		if aerr := verifyEither(tok, pol.PrimaryKey, pol.SecondaryKey, now, s.cfg.ClockSkew); aerr != nil {
			return principal{}, aerr
		}
		return principal{policy: pol.Name, rights: pol.Rights}, nil
	}

	id, ok := deviceFromResource(tok.Resource)
	if !ok {
		return principal{}, errUnauthorized(fmt.Sprintf("token resource %q names no device and no policy (skn)", tok.Resource))
	}
	dev, err := s.reg.GetDevice(ctx, id)
	if errors.Is(err, registry.ErrNotFound) {
		return principal{}, errUnauthorized(fmt.Sprintf("device %q is not registered", id))
	}
	if err != nil {
		return principal{}, &apiError{http.StatusInternalServerError, wire.CodeInternal, "ServerError", "registry unavailable"}
	}
	if aerr := verifyEither(tok, dev.PrimaryKey, dev.SecondaryKey, now, s.cfg.ClockSkew); aerr != nil {
		return principal{}, aerr
	}
	if dev.Status != registry.StatusEnabled {
		return principal{}, errUnauthorized(fmt.Sprintf("device %q is disabled", id))
	}
	return principal{deviceID: id, rights: registry.DeviceConnect}, nil
}

// verifyEither accepts a token signed with either key, so keys can be
// rotated without a gap.
func verifyEither(tok sas.Token, primary, secondary string, now time.Time, skew time.Duration) *apiError {
	err := tok.Verify(primary, now, skew)
	if err != nil && errors.Is(err, sas.ErrBadSignature) && secondary != "" {
		err = tok.Verify(secondary, now, skew)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, sas.ErrExpired):
		return errUnauthorized("SAS token expired")
	case errors.Is(err, sas.ErrBadSignature):
		return errUnauthorized("SAS token signature does not match: wrong key?")
	default:
		return errUnauthorized(fmt.Sprintf("SAS token rejected: %v", err))
	}
}

// deviceFromResource extracts the device ID from a device resource
// "host/devices/{id}" as decoded once from sr ([sas.Token.Resource]). The
// ID segment is percent-decoded once more, as [sas.Token.Covers] does: the
// SDKs encode the ID inside the resource ([sas.DeviceResource]) before
// encoding the whole resource, so "a+b" arrives as "a%2Bb" here.
func deviceFromResource(res string) (string, bool) {
	_, path, ok := strings.Cut(res, "/")
	if !ok {
		return "", false
	}
	seg, ok := strings.CutPrefix(path, "devices/")
	if !ok || seg == "" || strings.Contains(seg, "/") {
		return "", false
	}
	id, err := url.PathUnescape(seg)
	if err != nil || id == "" {
		return "", false
	}
	return id, true
}

// hostNames are the names tokens may be issued for.
func (s *Server) hostNames() []string {
	names := append([]string(nil), s.cfg.HostNames...)
	if s.cfg.AdvertiseAddr != "" {
		names = append(names, s.cfg.AdvertiseAddr)
	}
	if s.cfg.PublicAddr != "" {
		names = append(names, s.cfg.PublicAddr)
	}
	return names
}

// require authenticates the request and checks it holds want. For device
// tokens it also checks the device is deviceID.
func (s *Server) require(w http.ResponseWriter, r *http.Request, target string, want registry.Rights) (principal, bool) {
	p, aerr := s.authenticate(r.Context(), r, target)
	if aerr == nil && !p.rights.Has(want) {
		aerr = errForbidden(fmt.Sprintf("%s lacks %s", p, want))
	}
	if aerr != nil {
		s.log.Debug().Str("path", r.URL.Path).Str(fieldRemote, r.RemoteAddr).Str("reason", aerr.msg).Msg("request refused")
		s.writeError(w, r, aerr.status, aerr)
		return principal{}, false
	}
	return p, true
}
