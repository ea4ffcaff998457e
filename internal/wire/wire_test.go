package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"
)

func TestMessageRoundTrip(t *testing.T) {
	want := StreamRequest{
		StreamID:  "s1",
		Name:      "ssh",
		URL:       "wss://hub:8443/streams/s1",
		AuthToken: "tok",
		Deadline:  time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	}
	var buf bytes.Buffer
	if err := WriteMessage(&buf, &want); err != nil {
		t.Fatal(err)
	}
	if err := WriteMessage(&buf, &StreamResponse{Accepted: true}); err != nil {
		t.Fatal(err)
	}
	var got StreamRequest
	if err := ReadMessage(&buf, &got); err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Fatal(err)
	}
	var resp StreamResponse
	if err := ReadMessage(&buf, &resp); err != nil || !resp.Accepted {
		t.Fatalf("second message: %+v, %v", resp, err)
	}
	if err := ReadMessage(&buf, &resp); err != io.EOF {
		t.Fatalf("after last message: %v, want io.EOF", err)
	}
}

func TestReadMessageErrors(t *testing.T) {
	huge := make([]byte, 4)
	binary.BigEndian.PutUint32(huge, MaxMessageSize+1)
	short := make([]byte, 4, 8)
	binary.BigEndian.PutUint32(short, 10)
	short = append(short, "{}"...)
	garbage := make([]byte, 4, 8)
	binary.BigEndian.PutUint32(garbage, 3)
	garbage = append(garbage, "{x}"...)

	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"too large", huge, ErrTooLarge},
		{"truncated body", short, io.ErrUnexpectedEOF},
		{"truncated header", []byte{0, 0}, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v StreamRequest
			err := ReadMessage(bytes.NewReader(tt.in), &v)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	var v StreamRequest
	if err := ReadMessage(bytes.NewReader(garbage), &v); err == nil {
		t.Fatal("garbage JSON decoded without error")
	}
}

func TestValidate(t *testing.T) {
	ok := StreamRequest{StreamID: "s", Name: "n", URL: "u", AuthToken: "t", Deadline: time.Now()}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, mut := range []func(*StreamRequest){
		func(r *StreamRequest) { r.StreamID = "" },
		func(r *StreamRequest) { r.Name = "" },
		func(r *StreamRequest) { r.Name = string(make([]byte, MaxStreamNameLen+1)) },
		func(r *StreamRequest) { r.URL = "" },
		func(r *StreamRequest) { r.AuthToken = "" },
		func(r *StreamRequest) { r.Deadline = time.Time{} },
	} {
		r := ok
		mut(&r)
		if err := r.Validate(); err == nil {
			t.Errorf("%+v validated", r)
		}
	}
	long := StreamResponse{Reason: string(make([]byte, MaxReasonLen+1))}
	if err := long.Validate(); err == nil {
		t.Error("overlong reason validated")
	}
}

// FuzzReadMessage feeds arbitrary bytes to the control-message reader, as a
// hostile or broken peer on a control session would.
func FuzzReadMessage(f *testing.F) {
	var buf bytes.Buffer
	_ = WriteMessage(&buf, &StreamRequest{StreamID: "a", Name: "ssh", URL: "wss://h:1/streams/a", AuthToken: "t", Deadline: time.Unix(1, 0)})
	f.Add(buf.Bytes())
	f.Add([]byte{0, 0, 0, 2, '{', '}'})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 20, '{', '"', 'a'})
	f.Fuzz(func(t *testing.T, in []byte) {
		var req StreamRequest
		if err := ReadMessage(bytes.NewReader(in), &req); err != nil {
			return
		}
		if req.Validate() != nil {
			return
		}
		var out bytes.Buffer
		if err := WriteMessage(&out, &req); err != nil {
			t.Fatalf("re-encode a valid request: %v", err)
		}
		var again StreamRequest
		if err := ReadMessage(&out, &again); err != nil {
			t.Fatalf("re-read: %v", err)
		}
		if again.StreamID != req.StreamID || again.Name != req.Name || !again.Deadline.Equal(req.Deadline) {
			t.Fatalf("round trip changed %+v into %+v", req, again)
		}
	})
}
