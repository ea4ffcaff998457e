package hub

// Defences against hostile or broken input (issue #4, "Bad input") that do
// not belong to one endpoint: request paths that are not canonical, yamux's
// own complaints about a control session, and yamux streams a device opens
// although only the hub may.

import (
	"log"
	"net/http"
	"net/url"
	"strings"

	"github.com/rs/zerolog"
)

// canonicalPaths refuses, with 400, a request whose path does not start
// with "/" or has an empty, "." or ".." segment, spelled plainly or
// percent-encoded, before next sees it. http.ServeMux would answer such a
// path with a redirect to its cleaned form, which for "/devices/a/../b"
// names another device: a client that follows redirects would act on a
// device its request never named. Nothing in the hub's API needs such a
// path, so it is an error.
func (s *Server) canonicalPaths(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/") { // "OPTIONS *" and the like
			s.writeError(w, r, http.StatusBadRequest, errBadRequest("request path must start with /"))
			return
		}
		segs := strings.Split(r.URL.EscapedPath(), "/")
		for i, seg := range segs {
			if i == 0 || (i == len(segs)-1 && seg == "") {
				continue // the empty segment before the leading "/", a trailing "/"
			}
			dec, err := url.PathUnescape(seg)
			if err != nil || dec == "" || dec == "." || dec == ".." {
				s.writeError(w, r, http.StatusBadRequest, errBadRequest("request path has an empty or dot segment; send the canonical path, with IDs percent-encoded"))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// yamuxLogger sends what yamux says about a control session (a peer that
// does not speak yamux, a broken frame, a keepalive timeout) to the
// session's logger at debug level: it explains why a session ended, and
// a hostile device must not be able to flood the logs above debug.
func yamuxLogger(l zerolog.Logger) *log.Logger {
	return log.New(yamuxWriter{l}, "", 0)
}

type yamuxWriter struct{ log zerolog.Logger }

func (w yamuxWriter) Write(p []byte) (int, error) {
	w.log.Debug().Str("detail", string(trimNewline(p))).Msg("control session")
	return len(p), nil
}
