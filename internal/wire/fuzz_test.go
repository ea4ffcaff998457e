package wire

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
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

// FuzzFrames feeds arbitrary bytes to the frame parser that the hub runs
// on every session stream, from services and devices alike: a frame it
// accepts has a known type and a bounded payload, its header encodes back
// to the same bytes, and a close frame's reason is UTF-8 of at most
// MaxCloseReason bytes.
func FuzzFrames(f *testing.F) {
	var h [FrameHeaderSize]byte
	PutFrameHeader(h[:], FrameData, 5)
	f.Add(append(h[:], "hello"...))
	PutFrameHeader(h[:], FrameFin, 0)
	f.Add(h[:])
	f.Add(AppendClose(nil, 4001, "peer connection lost"))
	f.Add(AppendClose(nil, 1000, strings.Repeat("é", 100)))
	f.Add([]byte{FrameClose, 0, 0, 1, 0})
	f.Add([]byte{FrameData, 0xff, 0xff, 0xff})
	f.Add([]byte{9, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		for len(in) >= FrameHeaderSize {
			typ, n, err := ParseFrameHeader(in)
			if err != nil {
				return
			}
			if n > MaxFramePayload || (typ == FrameFin && n != 0) {
				t.Fatalf("accepted frame type %d with %d bytes", typ, n)
			}
			var again [FrameHeaderSize]byte
			PutFrameHeader(again[:], typ, n)
			if !bytes.Equal(again[:], in[:FrameHeaderSize]) {
				t.Fatalf("header %x encodes back as %x", in[:FrameHeaderSize], again)
			}
			in = in[FrameHeaderSize:]
			if len(in) < n {
				return
			}
			if typ == FrameClose {
				code, reason, err := ParseClose(in[:n])
				if err == nil {
					if len(reason) > MaxCloseReason || !utf8.ValidString(reason) {
						t.Fatalf("accepted close reason %q", reason)
					}
					if got := AppendClose(nil, code, reason); !bytes.Equal(got[FrameHeaderSize:], in[:n]) {
						t.Fatalf("close frame %x re-encodes as %x", in[:n], got[FrameHeaderSize:])
					}
				}
			}
			in = in[n:]
		}
	})
}

// FuzzReadOpenStream feeds arbitrary bytes to the reader of a service's
// first message on a session stream: an error or a message within the
// limits, never a panic.
func FuzzReadOpenStream(f *testing.F) {
	var buf bytes.Buffer
	_ = WriteMessage(&buf, &OpenStream{DeviceID: "dev1", Name: "ssh", ConnectTimeout: 5})
	f.Add(buf.Bytes())
	f.Add([]byte{0, 0, 0, 2, '{', '}'})
	f.Add([]byte(`{"deviceId":"x","name":""}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		var o OpenStream
		if err := ReadMessage(bytes.NewReader(in), &o); err != nil {
			return
		}
		if o.Validate() == nil && (o.DeviceID == "" || o.Name == "" || len(o.Name) > MaxStreamNameLen || o.ConnectTimeout < 0 || o.ResponseTimeout < 0) {
			t.Fatalf("Validate accepted %+v", o)
		}
	})
}
