package hub

// Scale-out: several replicas behind one name, sharing a registry in
// PostgreSQL and routing over NATS (Config.NATS). A replica is stateless but
// for the connections it holds.
//
// Routing. A replica subscribes to one subject per device whose control
// session it holds (deviceSubject: the ID base64url-encoded, since IDs may
// hold '.', '*', '>' and '$'), with plain subscriptions, all into one
// channel. A replica asked for a stream to a device it does not hold sends
// the initiation as a request on the device's subject; the holder runs it
// as its own (registry, limits, the device's answer, events) and answers
// with a streaming URL on itself, so that both sides meet there and no
// stream byte crosses replicas. A service session on another replica is
// told where the device is (wire.OpenResult with StatusRedirect) and opens
// the stream on a session to that replica. "No responders" means nobody
// holds the device, unless the session table says a replica claimed it,
// whose subscription may not have reached every NATS server yet: then the
// request is sent once more.
//
// Newest session wins across replicas. A replica claims each new control
// session in the registry (registry.Store.ClaimSession), which hands out
// the device's next epoch atomically, and publishes a takeover on the
// device's subject: a replica holding an older session of the device ends
// it. Sessions on one replica are ordered by epoch too. A session's release
// names its epoch, so a late one never erases a newer claim. A takeover
// that NATS lost (a replica was reconnecting) is caught by reconcile, which
// compares the sessions a replica holds with the session table after every
// NATS reconnect and every ReconcileInterval.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/dsproxy/dsproxy/hub/registry"
	"github.com/dsproxy/dsproxy/internal/wire"
)

// subjectPrefix starts every device subject.
const subjectPrefix = "dsproxy.device."

// revokeSubject carries the ID of a device that was changed or deleted to
// every replica: any of them may hold its session or relay its streams
// (a stream outlives a session that moved). Each re-reads the device and
// ends what it no longer allows.
const revokeSubject = "dsproxy.revoke"

// reconcileInterval is how often a replica checks the sessions it holds
// against the session table, besides after each NATS reconnect.
const reconcileInterval = time.Minute

// deviceSubject is the NATS subject of a device.
func deviceSubject(id string) string {
	return subjectPrefix + base64.RawURLEncoding.EncodeToString([]byte(id))
}

// subjectDevice is the device ID of a device subject.
func subjectDevice(subject string) (string, bool) {
	enc, ok := strings.CutPrefix(subject, subjectPrefix)
	if !ok {
		return "", false
	}
	id, err := base64.RawURLEncoding.DecodeString(enc)
	return string(id), err == nil && len(id) > 0
}

// Operations on a device subject.
const (
	opInitiate = "initiate" // run a stream initiation; answered with a routeReply
	opLocate   = "locate"   // which replica holds the device; answered with a routeReply
	opTakeover = "takeover" // a newer session (Epoch) is held by Replica; no answer
)

// routeMsg is a message on a device's subject.
type routeMsg struct {
	Op string `json:"op"`

	// opInitiate
	Policy          string        `json:"policy,omitempty"`
	Name            string        `json:"name,omitempty"`
	ConnectTimeout  time.Duration `json:"connectTimeout,omitempty"`
	ResponseTimeout time.Duration `json:"responseTimeout,omitempty"`

	// opTakeover
	Epoch   int64  `json:"epoch,omitempty"`
	Replica string `json:"replica,omitempty"`
}

// routeReply answers an opInitiate or opLocate request.
type routeReply struct {
	// Replica is the answering replica's advertised host:port.
	Replica string `json:"replica"`
	// Status is 200, or the HTTP status of a refusal described by
	// ErrorCode, ErrorName, Message and RetryAfter.
	Status     int           `json:"status"`
	ErrorCode  int           `json:"errorCode,omitempty"`
	ErrorName  string        `json:"errorName,omitempty"`
	Message    string        `json:"message,omitempty"`
	RetryAfter time.Duration `json:"retryAfter,omitempty"`
	// Stream is the device's answer to an opInitiate (Status 200).
	Stream wire.InitiateResponse `json:"stream"`
}

// maxRouteMessage bounds what a replica reads from a device subject.
const maxRouteMessage = 16 << 10

// errNoRoute reports a device that no replica holds.
var errNoRoute = errors.New("no hub replica holds the device's session")

// cluster is a replica's link to the others.
type cluster struct {
	nc  *nats.Conn
	log zerolog.Logger
	// msgs receives the messages of every device subject the replica holds.
	msgs chan *nats.Msg
	// subs are those subscriptions, by device ID; guarded by Server.mu.
	subs map[string]*nats.Subscription
	// reconnected gets a token after every NATS reconnect.
	reconnected chan struct{}
}

// connectCluster connects to the NATS servers in urls (comma-separated).
// Once connected it reconnects forever, and pings often enough that a dead
// NATS server is left within seconds.
func connectCluster(urls, replica string, log zerolog.Logger) (*cluster, error) {
	c := &cluster{
		log:         log,
		msgs:        make(chan *nats.Msg, 4096),
		subs:        make(map[string]*nats.Subscription),
		reconnected: make(chan struct{}, 1),
	}
	nc, err := nats.Connect(urls,
		nats.Name("dsproxy hub "+replica),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.PingInterval(2*time.Second),
		nats.MaxPingsOutstanding(2),
		nats.Timeout(5*time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn().Err(err).Msg("NATS connection lost: reconnecting")
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info().Str("server", nc.ConnectedUrlRedacted()).Msg("NATS reconnected")
			select {
			case c.reconnected <- struct{}{}:
			default:
			}
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn().Err(err).Msg("NATS error")
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", redactURLs(urls), err)
	}
	c.nc = nc
	if _, err := nc.ChanSubscribe(revokeSubject, c.msgs); err != nil {
		nc.Close()
		return nil, fmt.Errorf("subscribe to %s: %w", revokeSubject, err)
	}
	return c, nil
}

// redactURLs is a comma-separated URL list without passwords.
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			parts[i] = u.Redacted()
		}
	}
	return strings.Join(parts, ",")
}

// publishRevoke tells every replica that the device changed.
func (c *cluster) publishRevoke(id string) {
	if err := c.nc.Publish(revokeSubject, []byte(id)); err != nil {
		c.log.Warn().Err(err).Str(fieldDevice, id).Msg("cannot tell the other replicas that the device changed: they end its sessions when it reconnects or its streams end")
	}
}

// holdLocked subscribes to the device's subject; Server.mu must be held.
func (c *cluster) holdLocked(id string) {
	if c.subs[id] != nil {
		return
	}
	sub, err := c.nc.ChanSubscribe(deviceSubject(id), c.msgs)
	if err != nil {
		// Only a closed connection refuses; the hub is stopping.
		c.log.Warn().Err(err).Str(fieldDevice, id).Msg("cannot subscribe to the device's subject: other replicas will not reach it")
		return
	}
	c.subs[id] = sub
}

// dropLocked unsubscribes from the device's subject; Server.mu must be
// held.
func (c *cluster) dropLocked(id string) {
	if sub := c.subs[id]; sub != nil {
		_ = sub.Unsubscribe()
		delete(c.subs, id)
	}
}

// publish sends m on the device's subject, without an answer.
func (c *cluster) publish(id string, m routeMsg) {
	data, _ := json.Marshal(m)
	if err := c.nc.Publish(deviceSubject(id), data); err != nil {
		c.log.Warn().Err(err).Str(fieldDevice, id).Str("op", m.Op).Msg("NATS publish failed")
	}
}

// claimSession records c as the device's newest session in the registry and
// takes its epoch.
func (s *Server) claimSession(ctx context.Context, c *session) error {
	if s.cluster == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ConnectionWriteTimeout)
	defer cancel()
	epoch, err := s.reg.ClaimSession(ctx, c.deviceID, s.addr)
	if err != nil {
		return err
	}
	c.epoch = epoch
	return nil
}

// recheckAfter is when a new session checks the session table a second
// time for a newer claim whose takeover it may have missed.
const recheckAfter = time.Second

// announce tells the other replicas that c is the device's newest session,
// and makes sure c learns of any newer one. A newer claim made before c
// subscribed to the device's subject published its takeover before c
// could hear it: c reads the session table now, after subscribing, and
// again after recheckAfter, for a takeover that NATS had not yet routed to
// c's subscription. The returned function stops the second check.
func (s *Server) announce(c *session) (stop func()) {
	if s.cluster == nil {
		return func() {}
	}
	s.cluster.publish(c.deviceID, routeMsg{Op: opTakeover, Epoch: c.epoch, Replica: s.addr})
	s.checkNewest(c)
	t := time.AfterFunc(recheckAfter, func() {
		if s.track() {
			defer s.conns.Done()
			s.checkNewest(c)
		}
	})
	return func() { t.Stop() }
}

// checkNewest ends c if the session table holds a newer session of the
// device.
func (s *Server) checkNewest(c *session) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.ConnectionWriteTimeout)
	defer cancel()
	ds, err := s.reg.GetSession(ctx, c.deviceID)
	if err == nil && ds.Epoch > c.epoch {
		s.takeover(c.deviceID, ds.Epoch, ds.Replica)
	}
}

// release records the end of c, the device's current session here, unless
// the hub is stopping (Run releases all of its sessions at once then).
func (s *Server) release(c *session) {
	if s.cluster == nil || s.isClosing() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ConnectionWriteTimeout)
	defer cancel()
	if _, err := s.reg.ReleaseSession(ctx, c.deviceID, c.epoch); err != nil {
		c.log.Warn().Err(err).Msg("cannot record the end of the device's session; it is taken over when the device reconnects")
	}
}

// releaseAll records that the replica holds no session: on start (a
// previous run's sessions are gone) and once it has stopped.
func (s *Server) releaseAll() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := s.reg.ReleaseReplica(ctx, s.addr)
	if err != nil {
		s.log.Warn().Err(err).Msg("cannot record that this replica holds no device session")
		return
	}
	if n > 0 {
		s.log.Debug().Int("sessions", n).Msg("released the device sessions of this replica")
	}
}

// startCluster releases the sessions a previous run of the replica left
// in the session table and serves the replica's device subjects until the
// returned function is called, which also releases the sessions this run
// held.
func (s *Server) startCluster() (stop func()) {
	if s.cluster == nil {
		return func() {}
	}
	s.releaseAll()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.serveCluster(ctx)
	}()
	return func() {
		cancel()
		<-done
		s.releaseAll()
	}
}

// serveCluster handles the messages of the device subjects the replica
// holds, and reconciles its sessions with the session table, until ctx
// ends.
func (s *Server) serveCluster(ctx context.Context) {
	tick := time.NewTicker(reconcileInterval)
	defer tick.Stop()
	for {
		select {
		case m := <-s.cluster.msgs:
			s.routeIn(m)
		case <-s.cluster.reconnected:
			s.reconcile(ctx)
		case <-tick.C:
			s.reconcile(ctx)
		case <-ctx.Done():
			return
		}
	}
}

// routeIn handles one message on a device subject, or a revocation.
func (s *Server) routeIn(m *nats.Msg) {
	if m.Subject == revokeSubject {
		if s.track() {
			go func() {
				defer s.conns.Done()
				s.revokeIn(string(m.Data))
			}()
		}
		return
	}
	id, ok := subjectDevice(m.Subject)
	var rm routeMsg
	if !ok || len(m.Data) > maxRouteMessage || json.Unmarshal(m.Data, &rm) != nil {
		s.log.Warn().Str("subject", m.Subject).Int("bytes", len(m.Data)).Msg("ignoring a malformed message on a device subject")
		return
	}
	switch rm.Op {
	case opTakeover:
		s.takeover(id, rm.Epoch, rm.Replica)
	case opLocate:
		rep := routeReply{Replica: s.addr, Status: http.StatusOK}
		if !s.connected(id) {
			rep = refusalReply(s.addr, &refusal{apiError: errNotConnected(id)})
		}
		s.respond(m, rep)
	case opInitiate:
		if !s.track() {
			s.respond(m, refusalReply(s.addr, &refusal{apiError: errHubShuttingDown()}))
			return
		}
		s.metrics.route(routeServed)
		go func() {
			defer s.conns.Done()
			s.respond(m, s.initiateRouted(id, rm))
		}()
	default:
		s.log.Warn().Str("op", rm.Op).Msg("ignoring an unknown operation on a device subject")
	}
}

// revokeIn applies a change another replica made to a device.
func (s *Server) revokeIn(id string) {
	if checkDeviceID(id) != nil {
		s.log.Warn().Int("bytes", len(id)).Msg("ignoring a revocation with an invalid device ID")
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.ConnectionWriteTimeout)
	defer cancel()
	d, err := s.reg.GetDevice(ctx, id)
	switch {
	case errors.Is(err, registry.ErrNotFound):
		s.applyDevice(id, nil)
	case err != nil:
		s.log.Warn().Err(err).Str(fieldDevice, id).Msg("cannot read a changed device: its sessions stay until they reconnect")
	default:
		s.applyDevice(id, &d)
	}
}

// respond answers a request on a device subject.
func (s *Server) respond(m *nats.Msg, rep routeReply) {
	data, _ := json.Marshal(rep)
	if err := m.Respond(data); err != nil {
		s.log.Debug().Err(err).Msg("cannot answer a routed request")
	}
}

// initiateRouted runs an initiation another replica routed here.
func (s *Server) initiateRouted(id string, rm routeMsg) routeReply {
	connectTO := min(max(rm.ConnectTimeout, time.Second), s.cfg.MaxRequestTimeout)
	responseTO := min(max(rm.ResponseTimeout, time.Second), s.cfg.MaxRequestTimeout)
	ctx, cancel := context.WithTimeout(s.ctx, connectTO+responseTO)
	defer cancel()
	st, resp, _, ref := s.initiate(ctx, initiation{
		policy: rm.Policy, deviceID: id, name: rm.Name,
		connectTO: connectTO, responseTO: responseTO, routed: true,
	})
	switch {
	case ref != nil:
		return refusalReply(s.addr, ref)
	case st == nil:
		return refusalReply(s.addr, &refusal{apiError: errHubShuttingDown()})
	}
	return routeReply{Replica: s.addr, Status: http.StatusOK, Stream: s.initiateResponse(st, resp)}
}

func refusalReply(replica string, ref *refusal) routeReply {
	return routeReply{
		Replica: replica, Status: ref.status, ErrorCode: ref.code, ErrorName: ref.name,
		Message: ref.msg, RetryAfter: ref.retryAfter,
	}
}

// takeover ends the device's session here if it is older than epoch.
func (s *Server) takeover(id string, epoch int64, replica string) {
	c := s.sessionFor(id)
	if c == nil || c.epoch >= epoch {
		return
	}
	c.log.Info().Str("replica", replica).Int64("epoch", c.epoch).Int64("newer", epoch).Msg("device session taken over by a newer one on another replica")
	s.metrics.takenOver()
	c.end(errSessionReplaced)
}

// reconcile ends the sessions the replica holds that the session table
// says a newer session replaced: their takeover was lost.
func (s *Server) reconcile(ctx context.Context) {
	started := time.Now()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rows, err := s.reg.ReplicaSessions(ctx, s.addr)
	if err != nil {
		s.log.Warn().Err(err).Msg("cannot check this replica's device sessions against the registry")
		return
	}
	claimed := make(map[string]int64, len(rows))
	for _, r := range rows {
		claimed[r.DeviceID] = r.Epoch
	}
	var stale []*session
	s.mu.Lock()
	for id, c := range s.sessions {
		epoch, ok := claimed[id]
		// A session claimed after the rows were read may be missing
		// from them; one that is missing but older was taken over.
		if (ok && epoch > c.epoch) || (!ok && c.since.Before(started)) {
			stale = append(stale, c)
		}
	}
	s.mu.Unlock()
	for _, c := range stale {
		c.log.Info().Int64("epoch", c.epoch).Msg("device session replaced on another replica (found by reconciliation)")
		s.metrics.takenOver()
		c.end(errSessionReplaced)
	}
}

// initiateRemote routes an initiation to the replica that holds the
// device's session and returns its answer, or a refusal. Both nil means
// ctx ended first.
func (s *Server) initiateRemote(ctx context.Context, in initiation) (*wire.InitiateResponse, *refusal) {
	log := s.log.With().Str(fieldDevice, in.deviceID).Str(fieldName, in.name).Str(fieldPolicy, in.policy).Logger()
	refuse := func(result string, aerr *apiError, retryAfter time.Duration) *refusal {
		s.refused(log, in.deviceID, in.name, in.policy, result, aerr)
		return &refusal{aerr, retryAfter}
	}
	if le := s.lim.allow(in.policy, time.Now()); le != nil {
		return nil, refuse("throttled", errThrottled(le), le.retryAfter)
	}
	rctx, cancel := context.WithTimeout(ctx, in.connectTO+in.responseTO+5*time.Second)
	defer cancel()
	rep, err := s.route(rctx, in.deviceID, routeMsg{
		Op: opInitiate, Policy: in.policy, Name: in.name,
		ConnectTimeout: in.connectTO, ResponseTimeout: in.responseTO,
	})
	switch {
	case errors.Is(err, errNoRoute):
		return nil, refuse("unavailable", errNotConnected(in.deviceID), 0)
	case ctx.Err() != nil:
		return nil, nil
	case err != nil:
		return nil, refuse("error", errNoReplica(in.deviceID, err), 0)
	case rep.Status != http.StatusOK:
		// The holder refused it, and recorded why.
		return nil, &refusal{&apiError{rep.Status, rep.ErrorCode, rep.ErrorName, rep.Message}, rep.RetryAfter}
	}
	return &rep.Stream, nil
}

// locate returns the advertised host:port of the replica that holds the
// device's session, or a refusal.
func (s *Server) locate(ctx context.Context, id string) (string, *apiError) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ConnectionWriteTimeout)
	defer cancel()
	rep, err := s.route(ctx, id, routeMsg{Op: opLocate})
	switch {
	case errors.Is(err, errNoRoute):
		return "", errNotConnected(id)
	case err != nil:
		return "", errNoReplica(id, err)
	case rep.Status != http.StatusOK:
		return "", &apiError{rep.Status, rep.ErrorCode, rep.ErrorName, rep.Message}
	}
	return rep.Replica, nil
}

// route sends a request on the device's subject and returns the answer of
// the replica that holds it; errNoRoute when none does.
func (s *Server) route(ctx context.Context, id string, m routeMsg) (routeReply, error) {
	data, _ := json.Marshal(m)
	for attempt := 0; ; attempt++ {
		msg, err := s.cluster.nc.RequestWithContext(ctx, deviceSubject(id), data)
		if errors.Is(err, nats.ErrNoResponders) {
			if attempt > 0 || !s.claimedElsewhere(ctx, id) {
				s.metrics.route(routeNoRoute)
				return routeReply{}, errNoRoute
			}
			// A replica claimed the device: its subscription may still be
			// on its way through the NATS cluster.
			select {
			case <-time.After(100 * time.Millisecond):
				continue
			case <-ctx.Done():
				return routeReply{}, ctx.Err()
			}
		}
		if err != nil {
			s.metrics.route(routeFailed)
			return routeReply{}, err
		}
		var rep routeReply
		if len(msg.Data) > maxRouteMessage || json.Unmarshal(msg.Data, &rep) != nil || rep.Status == 0 {
			s.metrics.route(routeFailed)
			return routeReply{}, fmt.Errorf("malformed answer from a hub replica (%d bytes)", len(msg.Data))
		}
		s.metrics.route(routeSent)
		return rep, nil
	}
}

// claimedElsewhere reports whether the session table has a live session of
// the device.
func (s *Server) claimedElsewhere(ctx context.Context, id string) bool {
	ds, err := s.reg.GetSession(ctx, id)
	return err == nil && ds.Replica != ""
}

func errNotConnected(id string) *apiError {
	return &apiError{http.StatusNotFound, wire.CodeDeviceUnavailable, "DeviceNotOnline",
		fmt.Sprintf("device %q is not connected: is dsproxy device running there?", id)}
}

func errNoReplica(id string, err error) *apiError {
	return &apiError{http.StatusServiceUnavailable, wire.CodeServiceUnavailable, "ServiceUnavailable",
		fmt.Sprintf("cannot reach the hub replica that holds device %q: %v", id, err)}
}
