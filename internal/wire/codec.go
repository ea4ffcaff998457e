package wire

// The messages of a stream setup ([OpenStream], [OpenResult],
// [StreamRequest], [StreamResponse]) are encoded and decoded by hand, as
// the same JSON: encoding/json's reflection cost each of the hub, the
// device and the service proxy about a twentieth of its CPU per setup
// (issue 7). What goes on the wire is encoding/json's output byte for byte,
// and what is accepted is what encoding/json accepts, with the same result:
// the hand-written code takes only the plain case (flat objects, ASCII
// strings without escapes, whole numbers, the fields' exact names) and
// hands everything else to encoding/json. The fuzz tests compare the two.

import (
	"strconv"
	"time"
)

// appender is a message that can append its JSON encoding to b. It
// reports false, with b unchanged in meaning, when it leaves the message
// to encoding/json.
type appender interface {
	appendJSON(b []byte) ([]byte, bool)
}

// decoder is a message that can decode a JSON object of the plain kind
// into itself. It reports false, having changed nothing, for anything
// else, which encoding/json then decodes.
type decoder interface {
	decodeJSON(body []byte) bool
}

var (
	_ appender = (*OpenStream)(nil)
	_ appender = (*OpenResult)(nil)
	_ appender = (*StreamRequest)(nil)
	_ appender = (*StreamResponse)(nil)
	_ decoder  = (*OpenStream)(nil)
	_ decoder  = (*OpenResult)(nil)
	_ decoder  = (*StreamRequest)(nil)
	_ decoder  = (*StreamResponse)(nil)
)

// plainString reports whether encoding/json writes s as itself between
// quotes: printable ASCII without '"', '\\' and the characters it escapes
// for HTML ('<', '>', '&').
func plainString(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c > 0x7e, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}

// appendKey appends `,"key":` (without the comma for the first field,
// when b ends with '{').
func appendKey(b []byte, key string) []byte {
	if b[len(b)-1] != '{' {
		b = append(b, ',')
	}
	b = append(b, '"')
	b = append(b, key...)
	return append(b, '"', ':')
}

// stringField appends key and s; it reports false when s is not plain.
func stringField(b []byte, key, s string) ([]byte, bool) {
	if !plainString(s) {
		return b, false
	}
	b = appendKey(b, key)
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"'), true
}

func intField(b []byte, key string, n int) []byte {
	return strconv.AppendInt(appendKey(b, key), int64(n), 10)
}

func boolField(b []byte, key string, v bool) []byte {
	return strconv.AppendBool(appendKey(b, key), v)
}

// timeField appends key and t as time.Time.MarshalJSON does; it reports
// false for what that refuses or might write otherwise (a year outside
// 0–9999, a zone offset not in whole minutes or of a day or more).
func timeField(b []byte, key string, t time.Time) ([]byte, bool) {
	_, off := t.Zone()
	if y := t.Year(); y < 0 || y > 9999 || off%60 != 0 || off <= -24*3600 || off >= 24*3600 {
		return b, false
	}
	b = append(appendKey(b, key), '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"'), true
}

func (o *OpenStream) appendJSON(b []byte) ([]byte, bool) {
	b = append(b, '{')
	b, ok1 := stringField(b, "deviceId", o.DeviceID)
	b, ok2 := stringField(b, "name", o.Name)
	if o.ConnectTimeout != 0 {
		b = intField(b, "connectTimeoutInSeconds", o.ConnectTimeout)
	}
	if o.ResponseTimeout != 0 {
		b = intField(b, "responseTimeoutInSeconds", o.ResponseTimeout)
	}
	return append(b, '}'), ok1 && ok2
}

func (r *OpenResult) appendJSON(b []byte) ([]byte, bool) {
	ok := true
	str := func(key, v string) {
		if v != "" && ok {
			b, ok = stringField(b, key, v)
		}
	}
	b = append(b, '{')
	str("streamId", r.StreamID)
	b = intField(b, "status", r.Status)
	b = boolField(b, "accepted", r.Accepted)
	str("reason", r.Reason)
	if r.ErrorCode != 0 {
		b = intField(b, "errorCode", r.ErrorCode)
	}
	str("message", r.Message)
	if r.RetryAfter != 0 {
		b = intField(b, "retryAfter", r.RetryAfter)
	}
	str("replica", r.Replica)
	if r.MaxFrame != 0 {
		b = intField(b, "maxFrame", r.MaxFrame)
	}
	return append(b, '}'), ok
}

func (r *StreamRequest) appendJSON(b []byte) ([]byte, bool) {
	b = append(b, '{')
	b, ok1 := stringField(b, "streamId", r.StreamID)
	b, ok2 := stringField(b, "name", r.Name)
	b, ok3 := stringField(b, "url", r.URL)
	b, ok4 := stringField(b, "authToken", r.AuthToken)
	b, ok5 := timeField(b, "deadline", r.Deadline)
	if r.Inline {
		b = boolField(b, "inline", true)
	}
	if r.MaxFrame != 0 {
		b = intField(b, "maxFrame", r.MaxFrame)
	}
	return append(b, '}'), ok1 && ok2 && ok3 && ok4 && ok5
}

func (r *StreamResponse) appendJSON(b []byte) ([]byte, bool) {
	ok := true
	b = boolField(append(b, '{'), "accepted", r.Accepted)
	if r.Reason != "" {
		b, ok = stringField(b, "reason", r.Reason)
	}
	return append(b, '}'), ok
}

// Kinds of a plain JSON value.
const (
	kindString = iota
	kindNumber
	kindBool
)

// object reads the members of a plain JSON object: keys and string values
// of printable ASCII without escapes, whole numbers, true and false, and
// the whitespace JSON allows. Anything else (null, fractions, nested
// values, escapes, trailing bytes) is not plain, and next reports it.
type object struct {
	b       []byte
	i       int
	members int // read so far
}

func (o *object) space() {
	for o.i < len(o.b) {
		switch o.b[o.i] {
		case ' ', '\t', '\n', '\r':
			o.i++
		default:
			return
		}
	}
}

// start reads the opening brace.
func (o *object) start() bool {
	o.space()
	if o.i < len(o.b) && o.b[o.i] == '{' {
		o.i++
		return true
	}
	return false
}

// next reads the next member: its key, the kind of its value and the
// value (a string's without quotes, a bool's as "true" or "false"). At the
// end of a plain object, with nothing after it but whitespace, it returns
// done; ok false means the object is not plain.
func (o *object) next() (key []byte, kind int, val []byte, done, ok bool) {
	o.space()
	if o.i >= len(o.b) {
		return nil, 0, nil, false, false
	}
	if o.b[o.i] == '}' { // after '{' or a value; after ',' str fails below
		o.i++
		o.space()
		return nil, 0, nil, true, o.i == len(o.b)
	}
	if o.members > 0 {
		if o.b[o.i] != ',' {
			return nil, 0, nil, false, false
		}
		o.i++
		o.space()
	}
	o.members++
	if key, ok = o.str(); !ok {
		return nil, 0, nil, false, false
	}
	o.space()
	if o.i >= len(o.b) || o.b[o.i] != ':' {
		return nil, 0, nil, false, false
	}
	o.i++
	o.space()
	if o.i >= len(o.b) {
		return nil, 0, nil, false, false
	}
	switch c := o.b[o.i]; {
	case c == '"':
		val, ok = o.str()
		return key, kindString, val, false, ok
	case c == 't' || c == 'f':
		for _, w := range [...]string{"true", "false"} {
			if len(o.b)-o.i >= len(w) && string(o.b[o.i:o.i+len(w)]) == w {
				val = o.b[o.i : o.i+len(w)]
				o.i += len(w)
				return key, kindBool, val, false, true
			}
		}
	case c == '-' || c >= '0' && c <= '9':
		start := o.i
		if c == '-' {
			o.i++
		}
		digits := o.i
		for o.i < len(o.b) && o.b[o.i] >= '0' && o.b[o.i] <= '9' {
			o.i++
		}
		n := o.i - digits
		if n == 0 || n > 1 && o.b[digits] == '0' {
			return nil, 0, nil, false, false
		}
		if o.i < len(o.b) && (o.b[o.i] == '.' || o.b[o.i] == 'e' || o.b[o.i] == 'E') {
			return nil, 0, nil, false, false
		}
		return key, kindNumber, o.b[start:o.i], false, true
	}
	return nil, 0, nil, false, false
}

// str reads a plain string at o.i and returns its contents.
func (o *object) str() ([]byte, bool) {
	if o.i >= len(o.b) || o.b[o.i] != '"' {
		return nil, false
	}
	start := o.i + 1
	for j := start; j < len(o.b); j++ {
		switch c := o.b[j]; {
		case c == '"':
			o.i = j + 1
			return o.b[start:j], true
		case c < 0x20 || c > 0x7e || c == '\\':
			return nil, false
		}
	}
	return nil, false
}

// field is the decoding of one member into a message's field.
type field struct {
	name string
	kind int
	set  func(val []byte) bool
}

// decodeFields decodes a plain object into fields. A member with another
// name is skipped, as encoding/json skips unknown names, unless its name
// differs from a field's only in case (encoding/json would set the field
// then). It reports false when the object is not plain or a value does
// not fit its field; the caller must then drop what was set.
func decodeFields(body []byte, fields []field) bool {
	o := object{b: body}
	if !o.start() {
		return false
	}
	for {
		key, kind, val, done, ok := o.next()
		switch {
		case !ok:
			return false
		case done:
			return true
		}
		for _, f := range fields {
			if string(key) == f.name {
				if kind != f.kind || !f.set(val) {
					return false
				}
				break
			}
			if equalFoldASCII(key, f.name) {
				return false
			}
		}
	}
}

// equalFoldASCII reports whether the ASCII strings a and b are equal but
// for the case of letters.
func equalFoldASCII(a []byte, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

func setString(p *string) func([]byte) bool {
	return func(v []byte) bool { *p = string(v); return true }
}

// setInt parses a whole number that fits an int, as encoding/json takes
// it into an int field.
func setInt(p *int) func([]byte) bool {
	return func(v []byte) bool {
		neg := v[0] == '-'
		if neg {
			v = v[1:]
		}
		if len(v) > 18 { // may overflow: leave it to encoding/json
			return false
		}
		n := 0
		for _, c := range v {
			n = n*10 + int(c-'0')
		}
		if neg {
			n = -n
		}
		*p = n
		return true
	}
}

func setBool(p *bool) func([]byte) bool {
	return func(v []byte) bool { *p = v[0] == 't'; return true }
}

func (o *OpenStream) decodeJSON(body []byte) bool {
	t := *o
	if !decodeFields(body, []field{
		{"deviceId", kindString, setString(&t.DeviceID)},
		{"name", kindString, setString(&t.Name)},
		{"connectTimeoutInSeconds", kindNumber, setInt(&t.ConnectTimeout)},
		{"responseTimeoutInSeconds", kindNumber, setInt(&t.ResponseTimeout)},
	}) {
		return false
	}
	*o = t
	return true
}

func (r *OpenResult) decodeJSON(body []byte) bool {
	t := *r
	if !decodeFields(body, []field{
		{"streamId", kindString, setString(&t.StreamID)},
		{"status", kindNumber, setInt(&t.Status)},
		{"accepted", kindBool, setBool(&t.Accepted)},
		{"reason", kindString, setString(&t.Reason)},
		{"errorCode", kindNumber, setInt(&t.ErrorCode)},
		{"message", kindString, setString(&t.Message)},
		{"retryAfter", kindNumber, setInt(&t.RetryAfter)},
		{"replica", kindString, setString(&t.Replica)},
		{"maxFrame", kindNumber, setInt(&t.MaxFrame)},
	}) {
		return false
	}
	*r = t
	return true
}

func (r *StreamRequest) decodeJSON(body []byte) bool {
	t := *r
	if !decodeFields(body, []field{
		{"streamId", kindString, setString(&t.StreamID)},
		{"name", kindString, setString(&t.Name)},
		{"url", kindString, setString(&t.URL)},
		{"authToken", kindString, setString(&t.AuthToken)},
		{"deadline", kindString, func(v []byte) bool {
			// As time.Time.UnmarshalJSON reads it, quotes included.
			q := make([]byte, 0, len(v)+2)
			q = append(append(append(q, '"'), v...), '"')
			return t.Deadline.UnmarshalJSON(q) == nil
		}},
		{"inline", kindBool, setBool(&t.Inline)},
		{"maxFrame", kindNumber, setInt(&t.MaxFrame)},
	}) {
		return false
	}
	*r = t
	return true
}

func (r *StreamResponse) decodeJSON(body []byte) bool {
	t := *r
	if !decodeFields(body, []field{
		{"accepted", kindBool, setBool(&t.Accepted)},
		{"reason", kindString, setString(&t.Reason)},
	}) {
		return false
	}
	*r = t
	return true
}
