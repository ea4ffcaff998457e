//go:build unix

package tunnel

import (
	"os"
	"syscall"
)

// pollable reopens descriptor fd in non-blocking mode, so the runtime's
// poller serves it and Close interrupts a blocked Read; it returns def
// when that cannot be done. (os.Stdin.Fd() would switch the file back to
// blocking mode, hence the raw descriptor.)
func pollable(fd int, name string, def *os.File) *os.File {
	if err := syscall.SetNonblock(fd, true); err != nil {
		return def
	}
	return os.NewFile(uintptr(fd), name)
}
