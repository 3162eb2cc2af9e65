package bridge

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// FuzzStreamRequest: whatever a client sends as a stream's name and
// configuration, what goes to nats-server is a JSON object naming the
// path's stream, and a name nats-server would refuse never gets there.
func FuzzStreamRequest(f *testing.F) {
	for _, s := range [][2]string{
		{"ORDERS", `{"subjects":["orders.>"],"storage":"file","max_msgs":100000}`},
		{"ORDERS", `{"name":"ORDERS","retention":"workqueue"}`},
		{"ORDERS", `{"name":"OTHER"}`},
		{"a.b", `{}`}, {"", ``}, {"x", `[]`}, {"x", `null`}, {"x", `{"subjectz":1}`},
		{"x", `{"name":5}`}, {"x/y", `{}`}, {"ü", `{"max_age":1e99}`},
	} {
		f.Add(s[0], []byte(s[1]))
	}
	f.Fuzz(func(t *testing.T, name string, config []byte) {
		if err := ValidateStreamName(name); err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("name error %v is not ErrInvalid", err)
			}
			return
		}
		if strings.ContainsAny(name, " \t\r\n.*>/\\") || len(name) > maxStreamName {
			t.Fatalf("stream name %q accepted", name)
		}
		req, err := streamRequest(name, config)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("config error %v is not ErrInvalid", err)
			}
			return
		}
		var got struct {
			Name string `json:"name"`
		}
		if err := json.Unmarshal(req, &got); err != nil || got.Name != name {
			t.Fatalf("request %s for stream %q (%v)", req, name, err)
		}
	})
}
