package hub

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"

	"github.com/dsproxy/dsproxy/internal/batch"
	"github.com/dsproxy/dsproxy/internal/wsmux"
)

// batchListener wraps each accepted connection in a batch.Conn, below the
// TLS that Run puts on top, so that the relay can send each message it
// relays in one write (see relayMessage).
type batchListener struct{ net.Listener }

func (l batchListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return batch.New(c), nil
}

// batchKey is the request context key of a connection's batch.Conn.
type batchKey struct{}

// withBatch is the http.Server's ConnContext: it keeps the connection's
// batch.Conn, if it has one, in the context of the requests it carries.
func withBatch(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*tls.Conn); ok {
		if bc, ok := tc.NetConn().(*batch.Conn); ok {
			return context.WithValue(ctx, batchKey{}, bc)
		}
	}
	return ctx
}

// batchOf returns the batch.Conn under r's connection, or nil when the
// hub is served some other way (a test's own server).
func batchOf(r *http.Request) *batch.Conn {
	bc, _ := r.Context().Value(batchKey{}).(*batch.Conn)
	return bc
}

// batcherOf is batchOf as a wsmux.Batcher: nil when there is none.
func batcherOf(r *http.Request) wsmux.Batcher {
	if bc := batchOf(r); bc != nil {
		return bc
	}
	return nil
}
