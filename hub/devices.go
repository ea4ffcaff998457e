package hub

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/dsproxy/dsproxy/hub/registry"
	"github.com/dsproxy/dsproxy/internal/sas"
	"github.com/dsproxy/dsproxy/internal/wire"
)

// The registry's JSON shapes, shared with the clients (internal/wire).
type (
	DeviceJSON     = wire.Device
	Authentication = wire.Authentication
	SymmetricKey   = wire.SymmetricKey
	HubJSON        = wire.Hub
)

// maxBodyBytes bounds a registry request body.
const maxBodyBytes = 64 << 10

func (s *Server) deviceJSON(d registry.Device) DeviceJSON {
	state := "Disconnected"
	if s.connected(d.ID) {
		state = "Connected"
	}
	return DeviceJSON{
		DeviceID:        d.ID,
		GenerationID:    d.Generation,
		ETag:            d.ETag,
		ConnectionState: state,
		Status:          string(d.Status),
		StatusReason:    d.StatusReason,
		StatusUpdated:   d.Updated.UTC().Format(time.RFC3339),
		Authentication: Authentication{
			SymmetricKey: SymmetricKey{PrimaryKey: d.PrimaryKey, SecondaryKey: d.SecondaryKey},
			Type:         "sas",
		},
	}
}

func (s *Server) handleListDevices(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.require(w, r, "", registry.RegistryRead); !ok {
		return
	}
	devs, err := s.reg.ListDevices(r.Context())
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	out := make([]DeviceJSON, 0, len(devs))
	for _, d := range devs {
		out = append(out, s.deviceJSON(d))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleGetDevice(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if aerr := checkDeviceID(id); aerr != nil {
		s.writeError(w, r, aerr.status, aerr)
		return
	}
	if _, ok := s.require(w, r, "/devices/"+id, registry.RegistryRead); !ok {
		return
	}
	d, err := s.reg.GetDevice(r.Context(), id)
	if err != nil {
		s.registryError(w, r, id, err)
		return
	}
	writeJSON(w, http.StatusOK, s.deviceJSON(d))
}

// handlePutDevice creates a device, or updates it when If-Match is given
// (Azure semantics: without If-Match an existing device is a conflict).
// Keys left empty are generated on create and kept on update.
func (s *Server) handlePutDevice(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if aerr := checkDeviceID(id); aerr != nil {
		s.writeError(w, r, aerr.status, aerr)
		return
	}
	if _, ok := s.require(w, r, "/devices/"+id, registry.RegistryWrite); !ok {
		return
	}
	var in DeviceJSON
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		s.writeError(w, r, http.StatusRequestEntityTooLarge, &apiError{http.StatusRequestEntityTooLarge, wire.CodeRequestTooLarge, "MessageTooLarge", "request body too large"})
		return
	}
	if len(body) > 0 {
		if err := json.Unmarshal(body, &in); err != nil {
			s.writeError(w, r, http.StatusBadRequest, errBadRequest(fmt.Sprintf("device JSON: %v", err)))
			return
		}
	}
	if in.DeviceID != "" && in.DeviceID != id {
		s.writeError(w, r, http.StatusBadRequest, errBadRequest(fmt.Sprintf("deviceId %q in the body does not match %q in the path", in.DeviceID, id)))
		return
	}
	d := registry.Device{
		ID:           id,
		Status:       registry.StatusEnabled,
		StatusReason: in.StatusReason,
		PrimaryKey:   in.Authentication.SymmetricKey.PrimaryKey,
		SecondaryKey: in.Authentication.SymmetricKey.SecondaryKey,
	}
	switch in.Status {
	case "", "enabled":
	case "disabled":
		d.Status = registry.StatusDisabled
	default:
		s.writeError(w, r, http.StatusBadRequest, errBadRequest(fmt.Sprintf("status %q: want enabled or disabled", in.Status)))
		return
	}
	ifMatch := r.Header.Get("If-Match")
	if ifMatch != "" && (d.PrimaryKey == "" || d.SecondaryKey == "") {
		// An update that leaves a key out keeps it: disabling a device
		// must not rotate its keys.
		cur, err := s.reg.GetDevice(r.Context(), id)
		if err != nil {
			s.registryError(w, r, id, err)
			return
		}
		if d.PrimaryKey == "" {
			d.PrimaryKey = cur.PrimaryKey
		}
		if d.SecondaryKey == "" {
			d.SecondaryKey = cur.SecondaryKey
		}
	}
	for _, k := range []*string{&d.PrimaryKey, &d.SecondaryKey} {
		if *k == "" {
			*k = sas.NewKey()
			continue
		}
		raw, err := sas.DecodeKey(*k)
		if err != nil || len(raw) < 16 || len(raw) > 64 {
			s.writeError(w, r, http.StatusBadRequest, errBadRequest("symmetric keys must be base64 of 16 to 64 bytes"))
			return
		}
	}

	var out registry.Device
	if ifMatch == "" {
		out, err = s.reg.CreateDevice(r.Context(), d)
	} else {
		out, err = s.reg.UpdateDevice(r.Context(), d, unquoteETag(ifMatch))
	}
	if err != nil {
		s.registryError(w, r, id, err)
		return
	}
	s.deviceChanged(id, &out)
	s.log.Info().Str(fieldDevice, id).Str("status", string(out.Status)).Msg("device saved")
	writeJSON(w, http.StatusOK, s.deviceJSON(out))
}

// deviceChanged ends what a changed device no longer allows: every
// session and stream when it was disabled or deleted (d nil), those signed
// in with a key it no longer has otherwise. Other replicas, which may hold
// the device's session or streams, are told to do the same.
func (s *Server) deviceChanged(id string, d *registry.Device) {
	s.applyDevice(id, d)
	if s.cluster != nil {
		s.cluster.publishRevoke(id)
	}
}

// applyDevice is deviceChanged on this hub alone.
func (s *Server) applyDevice(id string, d *registry.Device) {
	if d == nil || d.Status != registry.StatusEnabled {
		s.dropSession(id)
		return
	}
	// A session signed in with a key the device no longer has is no
	// longer trusted; one with the other key goes on (rotation).
	s.revoke(id, func(c *session) bool { return c.signedWith(*d, s.cfg.ClockSkew) }, "device key replaced")
}

func (s *Server) handleDeleteDevice(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if aerr := checkDeviceID(id); aerr != nil {
		s.writeError(w, r, aerr.status, aerr)
		return
	}
	if _, ok := s.require(w, r, "/devices/"+id, registry.RegistryWrite); !ok {
		return
	}
	if err := s.reg.DeleteDevice(r.Context(), id, unquoteETag(r.Header.Get("If-Match"))); err != nil {
		s.registryError(w, r, id, err)
		return
	}
	s.deviceChanged(id, nil)
	s.log.Info().Str(fieldDevice, id).Msg("device deleted")
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleHub(w http.ResponseWriter, r *http.Request) {
	// Any valid credential may read this; a device token covers only its
	// own device, so it is checked against that.
	if _, aerr := s.authenticate(r.Context(), r, deviceTarget(r)); aerr != nil {
		s.writeError(w, r, aerr.status, aerr)
		return
	}
	writeJSON(w, http.StatusOK, HubJSON{HostName: s.publicAddr(), StreamingEndpoints: []string{"https://" + s.addr}})
}

// deviceTarget is the resource path a device token covers, taken from the
// token itself; "" (the whole hub) for any other token.
func deviceTarget(r *http.Request) string {
	tok, err := sas.ParseToken(r.Header.Get("Authorization"))
	if err != nil {
		return ""
	}
	if id, ok := deviceFromResource(tok.Resource); ok {
		return "/devices/" + id
	}
	return ""
}

func unquoteETag(v string) string {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		return v[1 : len(v)-1]
	}
	return v
}

func (s *Server) registryError(w http.ResponseWriter, r *http.Request, id string, err error) {
	switch {
	case errors.Is(err, registry.ErrNotFound):
		s.writeError(w, r, http.StatusNotFound, &apiError{http.StatusNotFound, wire.CodeDeviceNotFound, "DeviceNotFound", fmt.Sprintf("device %q is not registered", id)})
	case errors.Is(err, registry.ErrExists):
		s.writeError(w, r, http.StatusConflict, &apiError{http.StatusConflict, wire.CodeDeviceExists, "DeviceAlreadyExists", fmt.Sprintf("device %q already exists (send If-Match: * to update it)", id)})
	case errors.Is(err, registry.ErrPrecondition):
		s.writeError(w, r, http.StatusPreconditionFailed, &apiError{http.StatusPreconditionFailed, wire.CodePreconditionFailed, "PreconditionFailed", fmt.Sprintf("device %q changed since the given etag", id)})
	case errors.Is(err, registry.ErrInvalidText):
		s.writeError(w, r, http.StatusBadRequest, errBadRequest(fmt.Sprintf("device %q: its keys and status reason must be UTF-8 text without NUL bytes", id)))
	default:
		s.internalError(w, r, err)
	}
}

func (s *Server) internalError(w http.ResponseWriter, r *http.Request, err error) {
	s.log.Error().Err(err).Str("path", r.URL.Path).Msg("registry request failed")
	s.writeError(w, r, http.StatusInternalServerError, &apiError{http.StatusInternalServerError, wire.CodeInternal, "ServerError", "internal error"})
}
