package main

import (
	"strings"
	"testing"
)

// A perf report of the kind startPerf's stop reads: tab-separated samples,
// object and symbol, with perf's header comments and padding.
const perfReport = "# To display the perf.data header info, please use --header/--header-only options.\n" +
	"#\n" +
	"# Samples: 80  of event 'cpu-clock:ppp'\n" +
	"#\n" +
	" 40       \t[kernel.kallsyms]\t[k] _copy_from_iter\n" +
	" 10       \t[kernel.kallsyms]\t[k] tcp_sendmsg_locked\n" +
	" 12       \tdsproxy          \t[.] crypto/internal/fips140/aes/gcm.gcmAesEnc.abi0\n" +
	" 8        \tlibcrypto.so.3   \t[.] 0x0000000000241f99\n" +
	" 6        \tdsproxy          \t[.] runtime.memmove\n" +
	" 4        \tlibc.so.6        \t[.] __memset_avx512_unaligned_erms\n" +
	"\n"

func TestSplitSamples(t *testing.T) {
	s, err := splitSamples(strings.NewReader(perfReport))
	if err != nil {
		t.Fatal(err)
	}
	if want := (sampleSplit{kernel: 50, crypto: 20, other: 10}); s != want {
		t.Errorf("splitSamples = %+v, want %+v", s, want)
	}
}

func TestSplitSamplesBadLine(t *testing.T) {
	for _, in := range []string{"12 [k] no tabs\n", "many\t[kernel.kallsyms]\t[k] x\n"} {
		if _, err := splitSamples(strings.NewReader(in)); err == nil {
			t.Errorf("splitSamples(%q) succeeded, want an error", in)
		}
	}
}
