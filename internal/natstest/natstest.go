// Package natstest runs NATS servers inside a test process: a cluster of
// real nats-server nodes on 127.0.0.1 and random ports, routed to each
// other, for the tests of hub replicas.
package natstest

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Cluster starts n NATS servers on 127.0.0.1 that form one cluster, waits
// until a subscription on the first reaches the last, and shuts them down
// at cleanup.
func Cluster(t testing.TB, n int) []*server.Server {
	t.Helper()
	var srvs []*server.Server
	t.Cleanup(func() {
		for _, s := range srvs {
			s.Shutdown()
			s.WaitForShutdown()
		}
	})
	var seed *url.URL
	for i := range n {
		opts := &server.Options{
			ServerName: fmt.Sprintf("nats-%d", i),
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT,
			NoSigs:     true,
			NoLog:      true,
			Cluster: server.ClusterOpts{
				Name:     "dsproxy-test",
				Host:     "127.0.0.1",
				Port:     server.RANDOM_PORT,
				PoolSize: -1,
			},
		}
		if seed != nil {
			opts.Routes = []*url.URL{seed}
		}
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatalf("nats server %d: %v", i, err)
		}
		srvs = append(srvs, s)
		s.Start()
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("nats server %d did not start", i)
		}
		if seed == nil {
			seed = &url.URL{Scheme: "nats", Host: s.ClusterAddr().String()}
		}
	}
	if n > 1 {
		waitRouted(t, srvs[0], srvs[n-1])
	}
	return srvs
}

// waitRouted waits until a request sent to b reaches a subscriber on a.
func waitRouted(t testing.TB, a, b *server.Server) {
	t.Helper()
	ca, err := nats.Connect(a.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	cb, err := nats.Connect(b.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	sub, err := ca.Subscribe("natstest.ping", func(m *nats.Msg) { _ = m.Respond(nil) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := ca.Flush(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := cb.Request("natstest.ping", nil, 200*time.Millisecond); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("NATS cluster did not form within 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// URLs is the comma-separated client URLs of srvs, as a hub's Config.NATS
// takes them.
func URLs(srvs ...*server.Server) string {
	var us []string
	for _, s := range srvs {
		us = append(us, s.ClientURL())
	}
	return strings.Join(us, ",")
}
