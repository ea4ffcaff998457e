package main

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// TestNodesFormOneClusterAndSurviveOne starts three nodes on 127.0.0.1, .2
// and .3 as the scripts do (each routed to the earlier ones), waits until
// they form one cluster, stops one, and checks that the other two still
// route.
func TestNodesFormOneClusterAndSurviveOne(t *testing.T) {
	var srvs []*server.Server
	var routes []*url.URL
	var urls []string
	for i := range 3 {
		s, err := startNode(nodeConfig{name: fmt.Sprintf("n%d", i+1), host: fmt.Sprintf("127.0.0.%d", i+1), cluster: "test", routes: routes})
		if err != nil {
			t.Fatal(err)
		}
		srvs = append(srvs, s)
		t.Cleanup(func() { stopNode(s) })
		routes = append(routes, &url.URL{Scheme: "nats", Host: s.ClusterAddr().String()})
		urls = append(urls, s.ClientURL())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := waitRouted(ctx, urls); err != nil {
		t.Fatal(err)
	}
	stopNode(srvs[1])
	if err := waitRouted(ctx, []string{urls[0], urls[2]}); err != nil {
		t.Fatalf("after stopping n2: %v", err)
	}
}

func TestNodeRefusesNonLoopback(t *testing.T) {
	if _, err := startNode(nodeConfig{name: "x", host: "0.0.0.0"}); err == nil {
		t.Fatal("a node on 0.0.0.0 started")
	}
}

func TestParseRoutes(t *testing.T) {
	if _, err := parseRoutes("nats://127.0.0.1:1, nats://127.0.0.2:2"); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"127.0.0.1:1", "http://x:1", "nats://"} {
		if _, err := parseRoutes(bad); err == nil {
			t.Errorf("parseRoutes(%q) accepted it", bad)
		}
	}
}
