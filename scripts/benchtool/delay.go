package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// delayCmd creates two TUN devices, --tun-a and --tun-b, and joins them
// with a link that delays every packet by --delay in each direction: a
// packet the kernel routes out of one device comes in on the other that
// much later. bench.sh moves one device into a network namespace and
// addresses both ends, for the long-round-trip row on kernels without
// sch_netem. It prints "ready" once both devices exist and runs until
// SIGINT or SIGTERM; the devices vanish with the process.
func delayCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("delay", flag.ExitOnError)
	nameA := fs.String("tun-a", "", "name of the first TUN device (at most 15 bytes)")
	nameB := fs.String("tun-b", "", "name of the second TUN device")
	delay := fs.Duration("delay", 25*time.Millisecond, "one-way delay: the round trip is twice this")
	fs.Parse(args)
	if *delay < 0 {
		return fmt.Errorf("--delay %v: want zero or more", *delay)
	}
	a, err := openTUN(*nameA)
	if err != nil {
		return err
	}
	defer a.Close()
	b, err := openTUN(*nameB)
	if err != nil {
		return err
	}
	defer b.Close()
	fmt.Println("ready")
	stop := context.AfterFunc(ctx, func() { a.Close(); b.Close() })
	defer stop()
	var wg sync.WaitGroup
	wg.Go(func() { delayLine(a, b, *delay) })
	wg.Go(func() { delayLine(b, a, *delay) })
	wg.Wait()
	return nil
}

// openTUN creates the TUN device name (IFF_TUN|IFF_NO_PI: every read and
// write is one IP packet) and returns its file, non-blocking so that Close
// ends a pending Read.
func openTUN(name string) (*os.File, error) {
	if name == "" || len(name) > 15 {
		return nil, fmt.Errorf("TUN device name %q: want 1 to 15 bytes", name)
	}
	fd, err := syscall.Open("/dev/net/tun", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun (needs root or CAP_NET_ADMIN): %w", err)
	}
	const (
		tunSetIff = 0x400454ca
		iffTUN    = 0x0001
		iffNoPI   = 0x1000
	)
	var req struct {
		name  [16]byte
		flags uint16
		_     [22]byte
	}
	copy(req.name[:], name)
	req.flags = iffTUN | iffNoPI
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), tunSetIff, uintptr(unsafe.Pointer(&req))); errno != 0 {
		syscall.Close(fd)
		return nil, fmt.Errorf("create TUN device %s: %w", name, errno)
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("TUN device %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tun:"+name), nil
}

// delayQueue is how many packets one direction holds at most; more are
// dropped, as a router with a full queue would.
const delayQueue = 16384

// delayLine reads packets from src, one per Read, and writes each to dst
// d after it was read, in order. It returns when src fails (is closed),
// after the packets already read were written or dst failed.
func delayLine(src io.Reader, dst io.Writer, d time.Duration) {
	type packet struct {
		due  time.Time
		data []byte
	}
	q := make(chan packet, delayQueue)
	var wg sync.WaitGroup
	wg.Go(func() {
		broken := false
		for p := range q {
			if broken {
				continue
			}
			time.Sleep(time.Until(p.due))
			if _, err := dst.Write(p.data); err != nil && !errors.Is(err, syscall.EIO) {
				// EIO: the device is down (not yet up, or going away);
				// the kernel drops the packet, and so do we.
				broken = errors.Is(err, os.ErrClosed)
			}
		}
	})
	buf := make([]byte, 65536)
	for {
		n, err := src.Read(buf)
		if err != nil {
			break
		}
		p := packet{due: time.Now().Add(d), data: append([]byte(nil), buf[:n]...)}
		select {
		case q <- p:
		default: // queue full: drop
		}
	}
	close(q)
	wg.Wait()
}
