package hubclient

import (
	"net/http"
	"testing"
	"time"
)

// TestRetryAfter: HubError.RetryAfter reads both forms of Retry-After
// (RFC 9110 10.2.3) and ignores what it cannot use.
func TestRetryAfter(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"1", time.Second},
		{"120", 2 * time.Minute},
		{"0", 0},
		{"-5", 0},
		{"1.5", 0},
		{"soon", 0},
		{now.Add(30 * time.Second).Format(http.TimeFormat), 30 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{"99999999999999999999", 0}, // overflows int64: malformed
		{"9223372036854775807", time.Duration(9223372036854775807/int64(time.Second)) * time.Second},
	} {
		if got := retryAfter(tc.in, now); got != tc.want {
			t.Errorf("retryAfter(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
