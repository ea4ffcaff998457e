package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

func readyCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("ready", flag.ContinueOnError)
	urls := fs.String("urls", "", "comma-separated client URLs of the nodes (required)")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var list []string
	for _, u := range strings.Split(*urls, ",") {
		if u = strings.TrimSpace(u); u != "" {
			list = append(list, u)
		}
	}
	if len(list) == 0 {
		return errors.New("--urls is required")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	return waitRouted(ctx, list)
}

// waitRouted waits until a request sent through each of urls reaches a
// subscriber connected through every other one, or ctx ends.
func waitRouted(ctx context.Context, urls []string) error {
	conns := make([]*nats.Conn, len(urls))
	defer func() {
		for _, nc := range conns {
			if nc != nil {
				nc.Close()
			}
		}
	}()
	for i, u := range urls {
		var err error
		for {
			conns[i], err = nats.Connect(u, nats.Name("natstool ready"), nats.Timeout(time.Second))
			if err == nil {
				break
			}
			if !sleepCtx(ctx, 50*time.Millisecond) {
				return fmt.Errorf("connect to %s: %w", u, err)
			}
		}
		subj := fmt.Sprintf("natstool.ready.%d", i)
		if _, err := conns[i].Subscribe(subj, func(m *nats.Msg) { _ = m.Respond(nil) }); err != nil {
			return fmt.Errorf("subscribe through %s: %w", u, err)
		}
		if err := conns[i].Flush(); err != nil {
			return fmt.Errorf("flush %s: %w", u, err)
		}
	}
	for i := range urls {
		for j := range urls {
			if i == j {
				continue
			}
			subj := fmt.Sprintf("natstool.ready.%d", i)
			for {
				_, err := conns[j].Request(subj, nil, 200*time.Millisecond)
				if err == nil {
					break
				}
				if !sleepCtx(ctx, 20*time.Millisecond) {
					return fmt.Errorf("a request through %s does not reach a subscriber on %s: %w", urls[j], urls[i], err)
				}
			}
		}
	}
	return nil
}

// sleepCtx sleeps for d and reports whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
