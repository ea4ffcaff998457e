//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package tunnel

import (
	"net"
	"syscall"
)

// waitReadable blocks until c has data to read, has reached EOF or has
// failed, without reading: it peeks at one byte with the runtime's poller.
// It fails when c is closed or its read deadline passes.
func waitReadable(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var probe [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), probe[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return err != syscall.EAGAIN && err != syscall.EINTR
	})
	return err
}
