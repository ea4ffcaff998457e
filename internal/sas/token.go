package sas

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxTokenLen bounds the input of [ParseToken]; a device token is under
// 300 bytes.
const maxTokenLen = 4096

// tokenPrefix starts every SAS token.
const tokenPrefix = "SharedAccessSignature "

// maxExpiry is the latest se accepted, 9999-12-31T23:59:59Z, so that
// arithmetic on [Token.Expiry] cannot overflow.
const maxExpiry = 253402300799

// sigLen is the length of the base64 of an HMAC-SHA256.
var sigLen = base64.StdEncoding.EncodedLen(sha256.Size)

// Token fields.
const (
	fieldResource  = "sr"
	fieldSignature = "sig"
	fieldExpiry    = "se"
	fieldKeyName   = "skn"
)

// NewToken returns a SAS token granting access to resource until expiry,
// signed with key (padded standard base64, see [DecodeKey]):
//
//	SharedAccessSignature sr=<enc(resource)>&sig=<enc(signature)>&se=<expiry>[&skn=<enc(policyName)>]
//
// expiry is in Unix seconds, truncated; skn is present when policyName is
// not empty. enc is [url.QueryEscape] with lowercase percent escapes, as in
// "myhub.azure-devices.net%2fdevices%2fdev1", the form the Azure SDKs and
// documentation use. The signature is the base64 of HMAC-SHA256 of
// enc(resource) + "\n" + expiry.
//
// resource is usually a host name or the result of [DeviceResource]. Errors
// wrap [ErrMalformed]: a bad key, an empty resource, an expiry before 1970
// or after 9999, or a token longer than [ParseToken] accepts.
func NewToken(resource, key, policyName string, expiry time.Time) (string, error) {
	k, err := DecodeKey(key)
	if err != nil {
		return "", fmt.Errorf("new token: %w", err)
	}
	if resource == "" {
		return "", fmt.Errorf("new token: empty resource: %w", ErrMalformed)
	}
	se := expiry.Unix()
	if se < 0 || se > maxExpiry {
		return "", fmt.Errorf("new token: expiry %s out of range: %w", expiry.UTC().Format(time.RFC3339), ErrMalformed)
	}
	sr := urlEncode(resource)
	rawSe := strconv.FormatInt(se, 10)
	var b strings.Builder
	b.WriteString(tokenPrefix)
	b.WriteString(fieldResource + "=" + sr)
	b.WriteString("&" + fieldSignature + "=" + urlEncode(base64.StdEncoding.EncodeToString(sign(k, sr, rawSe))))
	b.WriteString("&" + fieldExpiry + "=" + rawSe)
	if policyName != "" {
		b.WriteString("&" + fieldKeyName + "=" + urlEncode(policyName))
	}
	if b.Len() > maxTokenLen {
		return "", fmt.Errorf("new token: longer than %d bytes: %w", maxTokenLen, ErrMalformed)
	}
	return b.String(), nil
}

// Token is a parsed SAS token. Only a Token returned by [ParseToken] can be
// checked: [Token.Verify] and [Token.Covers] work from the fields as
// received, which the signature covers.
type Token struct {
	// Resource is sr decoded with [url.QueryUnescape], such as
	// "myhub.azure-devices.net/devices/dev1".
	Resource string
	// RawResource is sr exactly as received, still percent-encoded; the
	// signature is over this form.
	RawResource string
	// Signature is sig decoded: base64 text.
	Signature string
	// Expiry is se.
	Expiry time.Time
	// KeyName is skn decoded: the shared access policy that signed the
	// token, or "" for a device token.
	KeyName string

	// rawExpiry is se exactly as received, for the string to sign.
	rawExpiry string
}

// ParseToken parses a SAS token:
//
//	SharedAccessSignature sr=...&sig=...&se=...[&skn=...]
//
// The "SharedAccessSignature " prefix is required. Fields may come in any
// order, each at most once; sr, sig and se are required and not empty, and
// any other field is an error. se must be decimal Unix seconds no later than
// 9999, and sig must decode to the base64 of an HMAC-SHA256. Inputs over
// 4096 bytes are refused unread.
//
// ParseToken checks form only; see [Token.Verify] and [Token.Covers]. Errors
// wrap [ErrMalformed] and never contain the signature.
func ParseToken(s string) (Token, error) {
	if len(s) > maxTokenLen {
		return Token{}, fmt.Errorf("token: longer than %d bytes: %w", maxTokenLen, ErrMalformed)
	}
	rest, ok := strings.CutPrefix(s, tokenPrefix)
	if !ok {
		return Token{}, fmt.Errorf("token: does not start with %q: %w", tokenPrefix, ErrMalformed)
	}
	var (
		t    Token
		seen = make(map[string]bool, 4)
		n    int // 1-based index of the field, for errors that cannot name it
	)
	for field := range strings.SplitSeq(rest, "&") {
		n++
		k, v, ok := strings.Cut(field, "=")
		if !ok {
			// The field may be a stray piece of the signature: do not quote it.
			return Token{}, fmt.Errorf("token: field %d is not name=value: %w", n, ErrMalformed)
		}
		switch k {
		case fieldResource, fieldSignature, fieldExpiry, fieldKeyName:
		default:
			return Token{}, fmt.Errorf("token: field %d has an unknown name (want %s, %s, %s or %s): %w",
				n, fieldResource, fieldSignature, fieldExpiry, fieldKeyName, ErrMalformed)
		}
		if seen[k] {
			return Token{}, fmt.Errorf("token: %s given twice: %w", k, ErrMalformed)
		}
		seen[k] = true
		if v == "" {
			return Token{}, fmt.Errorf("token: %s is empty: %w", k, ErrMalformed)
		}
		var err error
		switch k {
		case fieldResource:
			t.RawResource = v
			if t.Resource, err = url.QueryUnescape(v); err != nil {
				return Token{}, fmt.Errorf("token: %s: bad percent-encoding: %w", k, ErrMalformed)
			}
		case fieldSignature:
			// PathUnescape, not QueryUnescape: an unencoded "+" can only
			// be base64, never a space.
			if t.Signature, err = url.PathUnescape(v); err != nil {
				return Token{}, fmt.Errorf("token: %s: bad percent-encoding: %w", k, ErrMalformed)
			}
			if _, err := decodeSignature(t.Signature); err != nil {
				return Token{}, fmt.Errorf("token: %s: %w", k, err)
			}
		case fieldExpiry:
			t.rawExpiry = v
			if t.Expiry, err = parseExpiry(v); err != nil {
				return Token{}, fmt.Errorf("token: %s: %w", k, err)
			}
		case fieldKeyName:
			if t.KeyName, err = url.QueryUnescape(v); err != nil {
				return Token{}, fmt.Errorf("token: %s: bad percent-encoding: %w", k, ErrMalformed)
			}
		}
	}
	for _, k := range []string{fieldResource, fieldSignature, fieldExpiry} {
		if !seen[k] {
			return Token{}, fmt.Errorf("token: no %s: %w", k, ErrMalformed)
		}
	}
	return t, nil
}

// Verify checks that t is signed with key (padded standard base64, see
// [DecodeKey]) and has not expired: now must not be after the expiry plus
// skew. The signature is computed over RawResource + "\n" + se exactly as
// received, never re-encoded, and compared in constant time; the expiry
// checked is the signed se, not the Expiry field.
//
// Verify returns an error wrapping [ErrBadSignature] or [ErrExpired], the
// signature being checked first so that a forged token is never reported as
// merely expired, or [ErrMalformed] for a bad key or a Token not made by
// [ParseToken].
func (t Token) Verify(key string, now time.Time, skew time.Duration) error {
	k, err := DecodeKey(key)
	if err != nil {
		return fmt.Errorf("verify token: %w", err)
	}
	if t.RawResource == "" || t.rawExpiry == "" {
		return fmt.Errorf("verify token: not from ParseToken: %w", ErrMalformed)
	}
	expiry, err := parseExpiry(t.rawExpiry)
	if err != nil {
		return fmt.Errorf("verify token: %w", err)
	}
	got, err := decodeSignature(t.Signature)
	if err != nil || !hmac.Equal(got, sign(k, t.RawResource, t.rawExpiry)) {
		return fmt.Errorf("verify token: %w", ErrBadSignature)
	}
	if now.After(expiry.Add(skew)) {
		return fmt.Errorf("verify token: expired at %s: %w", expiry.Format(time.RFC3339), ErrExpired)
	}
	return nil
}

// Covers reports, by returning nil, whether t grants access to targetPath
// on a hub known by hostNames. targetPath is "" for the whole hub or an
// unescaped path such as "/devices/" + deviceID (device IDs cannot hold
// "/"). The check uses RawResource decoded, the form that was signed, which
// must equal Resource.
//
// The resource's host, before its first "/", must equal one of hostNames,
// ignoring ASCII case and any ":port" on either side. Its path must be a
// prefix of targetPath on "/" boundaries, segments compared ignoring ASCII
// case as Azure does after percent-decoding each segment once more, which
// undoes the device ID encoding of [DeviceResource]: "hub" covers
// "/devices/x", "hub/devices/x" covers "/devices/x" and "/devices/x/...",
// and never "/devices/xy". A resource or target path with an empty, "." or
// ".." segment covers nothing, so no spelling can widen a token's scope.
//
// Every refusal wraps [ErrScope]. Covers does not check the signature; call
// [Token.Verify] too, with the key of the device or policy being accessed.
func (t Token) Covers(hostNames []string, targetPath string) error {
	res, err := url.QueryUnescape(t.RawResource)
	if err != nil || res == "" || res != t.Resource {
		return fmt.Errorf("token resource %q does not match its raw form: %w", t.Resource, ErrScope)
	}
	host, path, hasPath := strings.Cut(res, "/")
	if !hostMatches(host, hostNames) {
		return fmt.Errorf("token host %q is not this hub: %w", host, ErrScope)
	}
	var have []string
	if hasPath {
		if have, err = resourceSegments(path); err != nil {
			return fmt.Errorf("token resource %q: %w", res, err)
		}
	}
	var want []string
	if targetPath != "" {
		rest, ok := strings.CutPrefix(targetPath, "/")
		if !ok {
			return fmt.Errorf("target path %q is not absolute: %w", targetPath, ErrScope)
		}
		want = strings.Split(rest, "/")
		for _, seg := range want {
			if seg == "" || seg == "." || seg == ".." {
				return fmt.Errorf("target path %q has an empty or dot segment: %w", targetPath, ErrScope)
			}
		}
	}
	if len(have) > len(want) {
		return fmt.Errorf("token for %q does not cover %q: %w", res, targetPath, ErrScope)
	}
	for i := range have {
		if !asciiEqualFold(have[i], want[i]) {
			return fmt.Errorf("token for %q does not cover %q: %w", res, targetPath, ErrScope)
		}
	}
	return nil
}

// resourceSegments splits the path of a token resource, without its
// leading "/", into segments, each percent-decoded once more.
func resourceSegments(path string) ([]string, error) {
	segs := strings.Split(path, "/")
	for i, seg := range segs {
		if seg == "" || seg == "." || seg == ".." {
			return nil, fmt.Errorf("empty or dot segment: %w", ErrScope)
		}
		dec, err := url.PathUnescape(seg)
		if err != nil {
			return nil, fmt.Errorf("bad percent-encoding: %w", ErrScope)
		}
		if dec == "" || dec == "." || dec == ".." || strings.Contains(dec, "/") {
			return nil, fmt.Errorf("encoded dot segment or slash: %w", ErrScope)
		}
		segs[i] = dec
	}
	return segs, nil
}

// hostMatches reports whether host equals one of hostNames, ignoring ASCII
// case and ports.
func hostMatches(host string, hostNames []string) bool {
	h := hostOnly(host)
	if h == "" {
		return false
	}
	for _, name := range hostNames {
		if asciiEqualFold(h, hostOnly(name)) {
			return true
		}
	}
	return false
}

// hostOnly strips an optional port and IPv6 brackets; a name it cannot
// split is returned whole.
func hostOnly(h string) string {
	if host, _, ok := splitHostPort(h); ok {
		return host
	}
	return h
}

// asciiEqualFold is strings.EqualFold for ASCII letters only, so that no
// Unicode folding (U+212A KELVIN SIGN is "k") can alias two names.
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if lowerASCII(a[i]) != lowerASCII(b[i]) {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// sign returns HMAC-SHA256(key, sr + "\n" + se).
func sign(key []byte, sr, se string) []byte {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(sr))
	mac.Write([]byte{'\n'})
	mac.Write([]byte(se))
	return mac.Sum(nil)
}

// decodeSignature decodes the base64 text of an HMAC-SHA256.
func decodeSignature(sig string) ([]byte, error) {
	// The length check also keeps out the line breaks the decoder skips.
	if len(sig) != sigLen {
		return nil, fmt.Errorf("want %d base64 characters: %w", sigLen, ErrMalformed)
	}
	b, err := base64.StdEncoding.Strict().DecodeString(sig)
	if err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("not padded standard base64: %w", ErrMalformed)
	}
	return b, nil
}

// parseExpiry parses se: decimal Unix seconds, no sign, at most 9999.
func parseExpiry(se string) (time.Time, error) {
	if se == "" {
		return time.Time{}, fmt.Errorf("empty: %w", ErrMalformed)
	}
	for i := 0; i < len(se); i++ {
		if se[i] < '0' || se[i] > '9' {
			return time.Time{}, fmt.Errorf("not decimal Unix seconds: %w", ErrMalformed)
		}
	}
	n, err := strconv.ParseInt(se, 10, 64)
	if err != nil || n > maxExpiry {
		return time.Time{}, fmt.Errorf("later than year 9999: %w", ErrMalformed)
	}
	return time.Unix(n, 0).UTC(), nil
}

// urlEncode is [url.QueryEscape] with lowercase percent escapes, the form
// of the Azure SDKs' tokens ("%2f", not "%2F").
func urlEncode(s string) string {
	b := []byte(url.QueryEscape(s))
	for i := 0; i < len(b); i++ {
		if b[i] == '%' {
			// QueryEscape writes every '%' as the start of an escape.
			b[i+1], b[i+2] = lowerASCII(b[i+1]), lowerASCII(b[i+2])
			i += 2
		}
	}
	return string(b)
}
