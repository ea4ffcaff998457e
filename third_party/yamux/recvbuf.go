package yamux

import (
	"math/bits"
	"sync"
)

// dsproxy fork: the pool of the buffers that received data frames' bodies
// are read into (see Stream.readData). A stream keeps each frame's body in
// its buffer until it has been read, so the bytes it holds stay bounded
// by its receive window, and a reader can hand a body on without copying
// it (Stream.Next, Stream.WriteTo).

// recvChunk is one received data frame's body: b, of which b[off:] is
// unread, in the pooled buffer buf.
type recvChunk struct {
	buf *[]byte
	b   []byte
	off int
}

// Size classes: a power of two, and a power of two plus recvSlack, so
// that a payload of a power of two behind a small header of the
// application's (dsproxy: 256 KiB and 5 bytes) takes a buffer barely
// larger than it rather than twice its size.
const (
	recvSlack    = 64
	minPooledLog = 9  // bodies under 512 bytes are allocated, not pooled
	maxPooledLog = 24 // nor are bodies over 16 MiB
)

// recvPools[2*k] holds buffers of 1<<k bytes, recvPools[2*k+1] of
// 1<<k + recvSlack.
var recvPools [2 * (maxPooledLog + 1)]sync.Pool

// recvClass returns the pool and buffer size for a body of n bytes, or
// -1 when n is not pooled.
func recvClass(n int) (class, size int) {
	if n < 1<<minPooledLog || n > 1<<maxPooledLog {
		return -1, n
	}
	k := bits.Len(uint(n - 1)) // 1<<k >= n > 1<<(k-1)
	if half := 1 << (k - 1); n <= half+recvSlack {
		return 2*(k-1) + 1, half + recvSlack
	}
	return 2 * k, 1 << k
}

// getRecvBuf returns a buffer of n bytes.
func getRecvBuf(n int) *[]byte {
	class, size := recvClass(n)
	if class >= 0 {
		if p, ok := recvPools[class].Get().(*[]byte); ok {
			*p = (*p)[:n]
			return p
		}
	}
	b := make([]byte, n, size)
	return &b
}

// putRecvBuf gives p, from getRecvBuf, back to its pool; p must not be
// used after.
func putRecvBuf(p *[]byte) {
	c := cap(*p)
	class, size := recvClass(c)
	if class < 0 || size != c {
		return
	}
	recvPools[class].Put(p)
}
