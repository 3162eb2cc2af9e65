package httpapi

import (
	"encoding/json"
	"fmt"
	"testing"
)

// entrySeeds are batch entries of every shape: the usual ones, the odd
// but valid ones the scanner hands to encoding/json, and broken ones.
var entrySeeds = []string{
	`{"subject":"orders.a","data":"hi"}`,
	` { "subject" : "orders.a" , "reply" : "r.1", "data" : "hi" } `,
	`{"subject":"x","data_base64":"AAE="}`,
	`{"subject":"x","data":"a","data_base64":"YQ=="}`,
	`{"subject":"x","data":"quote \" and \u00e9 and \ud83d\ude00"}`,
	`{"subject":"x","data":"h\u00e9llo wörld"}`,
	`{"subject":"x","data":"bad \xff utf-8"}`,
	`{"subject":"x","data":"\ud800 lone surrogate"}`,
	`{"subject":"x","headers":{"A":"1","B":["2","3"]},"data":"d"}`,
	`{"subject":"x","headers":null}`, `{"subject":"x","headers":5}`, `{"subject":"x","headers":{"A":5}}`,
	`{"subject":"x","headers":{"A":"}"}}`, `{"subject":"x","headers":[}`, `{"subject":"x","headers":{]}`,
	`{"subject":"a","subject":null}`, `{"subject":"a","data":"x","data":null}`,
	`{"subject":"x","msg_id":"k1"}`, `{"Subject":"x"}`, `{"subj\u0065ct":"x"}`, `{"subject":"x","extra":1}`,
	`{"subject":1}`, `{"subject":"x","data":true}`, `{"subject":"x"}x`, `{"subject":"x",}`, `{"subject" "x"}`,
	`{"subject":"x"`, `{"subject":nul}`, `{"subject":nullx}`, `{"subject":"tab	in"}`,
	`{}`, `[]`, `null`, `"x"`, ``, `{`, `}`, `{"data":"` + "\x00" + `"}`,
}

// TestScanEntryMatchesEncodingJSON: an entry the scanner decodes is
// decoded exactly as encoding/json decodes it (see FuzzScanEntry).
func TestScanEntryMatchesEncodingJSON(t *testing.T) {
	scanned := 0
	for _, s := range entrySeeds {
		if checkScanEntry(t, []byte(s)) {
			scanned++
		}
	}
	if scanned < 10 {
		t.Fatalf("the scanner decoded %d of %d seeds; the usual shapes should not need encoding/json", scanned, len(entrySeeds))
	}
}

// FuzzScanEntry holds the batch entry scanner to encoding/json: what it
// accepts, encoding/json accepts with the same fields.
func FuzzScanEntry(f *testing.F) {
	for _, s := range entrySeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) { checkScanEntry(t, line) })
}

// checkScanEntry reports whether the scanner decoded line, failing t if
// it decoded it otherwise than encoding/json.
func checkScanEntry(t *testing.T, line []byte) bool {
	t.Helper()
	for _, stored := range []bool{false, true} {
		var (
			got, want       storedEntry
			sc              entryScanner
			gotID           *string
			scanned, wantOK bool
		)
		if stored {
			gotID = &got.MsgID
			scanned = sc.scan(line, &got.wireMsg, gotID)
			wantOK = json.Unmarshal(line, &want) == nil
		} else {
			scanned = sc.scan(line, &got.wireMsg, nil)
			wantOK = json.Unmarshal(line, &want.wireMsg) == nil
		}
		if !scanned {
			if !stored {
				return false
			}
			continue
		}
		if !wantOK {
			t.Fatalf("scanner accepted %q (stored %v), encoding/json refuses it", line, stored)
		}
		if g, w := describe(got), describe(want); g != w {
			t.Fatalf("%q (stored %v): scanner %s, encoding/json %s", line, stored, g, w)
		}
	}
	return true
}

func describe(e storedEntry) string {
	str := func(p *string) string {
		if p == nil {
			return "nil"
		}
		return fmt.Sprintf("%q", *p)
	}
	if e.plainData != nil {
		if e.Data != nil {
			return "both data and plainData set"
		}
		d := string(e.plainData)
		e.Data = &d
	}
	var h any = nil
	if e.Headers != nil {
		h = string(e.Headers)
	}
	return fmt.Sprintf("subject %q reply %q headers %v data %s data_base64 %s msg_id %q",
		e.Subject, e.Reply, h, str(e.Data), str(e.DataBase64), e.MsgID)
}

// batchBody is n entries as the bench sends them.
func batchBody(n int) [][]byte {
	var lines [][]byte
	for range n {
		lines = append(lines, []byte(`{"subject":"bench.batch","data":"0123456789abcdef"}`))
	}
	return lines
}

// BenchmarkParseEntry compares a batch's entry decoding with the
// scanner (scan) and with encoding/json alone (json, as before the
// scanner), per batch of 1,000 entries.
func BenchmarkParseEntry(b *testing.B) {
	lines := batchBody(1000)
	b.Run("scan", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var sc entryScanner
			for _, l := range lines {
				if _, err := sc.parseEntry(l); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, l := range lines {
				if _, err := decodeEntry(l); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}
