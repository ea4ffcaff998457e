//go:build !unix

package tunnel

import "os"

func pollable(_ int, _ string, def *os.File) *os.File { return def }
