package wire

import "testing"

// TestFrameLimit: a peer that announced nothing gets legacy frames, one
// that announced more than this build sends gets MaxFramePayload, and one
// that announced less gets what it asked for.
func TestFrameLimit(t *testing.T) {
	for _, c := range []struct{ maxFrame, want int }{
		{0, LegacyFramePayload},
		{-1, LegacyFramePayload},
		{MaxFramePayload, MaxFramePayload},
		{4 * MaxFramePayload, MaxFramePayload},
		{16 << 10, 16 << 10},
	} {
		if got := FrameLimit(c.maxFrame); got != c.want {
			t.Errorf("FrameLimit(%d) = %d, want %d", c.maxFrame, got, c.want)
		}
	}
	if LegacyFramePayload > MaxFramePayload {
		t.Errorf("LegacyFramePayload %d exceeds MaxFramePayload %d", LegacyFramePayload, MaxFramePayload)
	}
}
