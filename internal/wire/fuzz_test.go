package wire

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"strings"
	"testing"
)

// FuzzReadStreamResponse feeds arbitrary bytes to the reader of a device's
// answer, which the hub parses from every device: a hostile or broken
// device must get an error, never a panic or an allocation beyond
// MaxMessageSize, and ReadMessage must never read past the message.
func FuzzReadStreamResponse(f *testing.F) {
	var buf bytes.Buffer
	_ = WriteMessage(&buf, &StreamResponse{Accepted: true})
	f.Add(buf.Bytes())
	buf.Reset()
	_ = WriteMessage(&buf, &StreamResponse{Reason: "no target named ssh"})
	f.Add(append(buf.Bytes(), "trailing"...))
	f.Add([]byte{0, 0, 0, 2, '{', '}'})
	f.Add([]byte{0, 0, 0, 4, 'n', 'u', 'l', 'l'})
	f.Add([]byte{0, 0, 0x40, 0x01})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, '{'})
	f.Add([]byte(`{"accepted":true}`))
	long := `{"reason":"` + strings.Repeat("x", MaxReasonLen+1) + `"}`
	f.Add(append(binary.BigEndian.AppendUint32(nil, uint32(len(long))), long...))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		var resp StreamResponse
		if err := ReadMessage(r, &resp); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(in))
		if n > MaxMessageSize {
			t.Fatalf("accepted a %d-byte message", n)
		}
		if r.Len() != len(in)-4-n {
			t.Fatalf("read %d bytes past a %d-byte message", len(in)-4-n-r.Len(), n)
		}
		if resp.Validate() != nil {
			if len(resp.Reason) <= MaxReasonLen {
				t.Fatalf("Validate refused %+v", resp)
			}
			return
		}
		var out bytes.Buffer
		if err := WriteMessage(&out, &resp); err != nil {
			t.Fatalf("re-encode a valid response: %v", err)
		}
		var again StreamResponse
		if err := ReadMessage(&out, &again); err != nil || !reflect.DeepEqual(again, resp) {
			t.Fatalf("round trip changed %+v into %+v, %v", resp, again, err)
		}
	})
}

// FuzzReadSessionReady feeds arbitrary bytes to the reader of the hub's
// first message, which a device parses from whatever answers at the hub's
// address.
func FuzzReadSessionReady(f *testing.F) {
	var buf bytes.Buffer
	_ = WriteMessage(&buf, &SessionReady{DeviceID: "dev1"})
	f.Add(buf.Bytes())
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0, 0, 0, 1, '['})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		var msg SessionReady
		if err := ReadMessage(r, &msg); err != nil {
			return
		}
		if n := int(binary.BigEndian.Uint32(in)); n > MaxMessageSize || r.Len() != len(in)-4-n {
			t.Fatalf("accepted a %d-byte message and left %d of %d bytes", n, r.Len(), len(in))
		}
	})
}
