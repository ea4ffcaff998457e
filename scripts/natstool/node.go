package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// nodeConfig is one NATS server of a cluster.
type nodeConfig struct {
	name        string
	host        string
	port        int // client port; 0 takes a free one
	clusterPort int // route port; 0 takes a free one
	cluster     string
	routes      []*url.URL
	log         bool
}

// startNode starts a NATS server and waits until it accepts clients. The
// caller shuts it down with stopNode.
func startNode(cfg nodeConfig) (*server.Server, error) {
	if ip := net.ParseIP(cfg.host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("--host %q: want a loopback IP address (127.0.0.0/8 or ::1): natstool serves tests", cfg.host)
	}
	port, cport := cfg.port, cfg.clusterPort
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if cport == 0 {
		cport = server.RANDOM_PORT
	}
	opts := &server.Options{
		ServerName: cfg.name,
		Host:       cfg.host,
		Port:       port,
		NoSigs:     true,
		NoLog:      !cfg.log,
		Logtime:    true,
		Cluster: server.ClusterOpts{
			Name: cfg.cluster,
			Host: cfg.host,
			Port: cport,
			// One route connection per pair, as the tests run it
			// (internal/natstest): what is measured is the interest
			// each node keeps, not a pool of connections.
			PoolSize: -1,
		},
		Routes: cfg.routes,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats server %s: %w", cfg.name, err)
	}
	if cfg.log {
		s.ConfigureLogger()
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		stopNode(s)
		return nil, fmt.Errorf("nats server %s did not accept clients within 10 s (port taken?)", cfg.name)
	}
	return s, nil
}

// stopNode shuts s down and waits until it has.
func stopNode(s *server.Server) {
	s.Shutdown()
	s.WaitForShutdown()
}

// clusterURL is the route URL of s, for other nodes' --routes.
func clusterURL(s *server.Server) string {
	return "nats://" + s.ClusterAddr().String()
}

// parseRoutes parses a comma-separated list of nats://host:port route URLs.
func parseRoutes(list string) ([]*url.URL, error) {
	var out []*url.URL
	for _, r := range strings.Split(list, ",") {
		if r = strings.TrimSpace(r); r == "" {
			continue
		}
		u, err := url.Parse(r)
		if err != nil || u.Scheme != "nats" || u.Host == "" {
			return nil, fmt.Errorf("route %q: want nats://host:port", r)
		}
		out = append(out, u)
	}
	return out, nil
}

func nodeCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("node", flag.ContinueOnError)
	var cfg nodeConfig
	fs.StringVar(&cfg.name, "name", "", "the server's name, unique in the cluster (required)")
	fs.StringVar(&cfg.host, "host", "127.0.0.1", "loopback address to serve clients and routes on")
	fs.IntVar(&cfg.port, "port", 0, "client port (0: a free one)")
	fs.IntVar(&cfg.clusterPort, "cluster-port", 0, "route port (0: a free one)")
	fs.StringVar(&cfg.cluster, "cluster", "dsproxy", "the cluster's name")
	routes := fs.String("routes", "", "comma-separated route URLs (nats://host:cluster-port) of the nodes started before this one")
	fs.BoolVar(&cfg.log, "log", false, "log the server's notices to stderr")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.name == "" {
		return fmt.Errorf("--name is required")
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if cfg.routes, err = parseRoutes(*routes); err != nil {
		return fmt.Errorf("--routes: %w", err)
	}
	s, err := startNode(cfg)
	if err != nil {
		return err
	}
	defer stopNode(s)
	fmt.Printf("client=%s cluster=%s pid=%s\n", s.ClientURL(), clusterURL(s), strconv.Itoa(os.Getpid()))
	<-ctx.Done()
	return nil
}

func clusterCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	n := fs.Int("n", 3, "how many nodes")
	host := fs.String("host", "127.0.0.1", "loopback address to serve clients and routes on")
	log := fs.Bool("log", false, "log the servers' notices to stderr")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *n < 1 {
		return fmt.Errorf("--n %d: want at least 1", *n)
	}
	var srvs []*server.Server
	defer func() {
		for _, s := range srvs {
			stopNode(s)
		}
	}()
	// Each node routes to every earlier one: see the package comment.
	var routes []*url.URL
	for i := range *n {
		s, err := startNode(nodeConfig{name: fmt.Sprintf("n%d", i+1), host: *host, cluster: "dsproxy", routes: routes, log: *log})
		if err != nil {
			return err
		}
		srvs = append(srvs, s)
		routes = append(routes, &url.URL{Scheme: "nats", Host: s.ClusterAddr().String()})
	}
	var urls []string
	for _, s := range srvs {
		urls = append(urls, s.ClientURL())
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := waitRouted(rctx, urls)
	cancel()
	if err != nil {
		return err
	}
	fmt.Println(strings.Join(urls, ","))
	<-ctx.Done()
	return nil
}
