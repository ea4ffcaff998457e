package hub

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"time"

	"github.com/dsproxy/dsproxy/internal/wire"
)

// writeJSON writes v as the JSON body of a response with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeError writes an Azure-style JSON error.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, status int, e *apiError) {
	s.metrics.refused(status)
	tracking := randomID(12)
	w.Header().Set("iothub-errorcode", e.name)
	writeJSON(w, status, wire.NewError(e.code, e.name, e.msg, tracking, time.Now()))
}

// randomID returns n random bytes from crypto/rand, base64url-encoded.
func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails: crypto/rand panics rather than return an error
	return base64.RawURLEncoding.EncodeToString(b)
}
