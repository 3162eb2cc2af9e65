package httpapi

import "testing"

type closer struct{ name string }

func (*closer) Close() {}

// A session's subscription table keeps each sid's subscription through
// replacements and removals in any order (a removal moves the last entry
// into the gap).
func TestSubTable(t *testing.T) {
	var tab subTable
	subs := map[string]*closer{}
	for _, sid := range []string{"a", "b", "c", "d"} {
		subs[sid] = &closer{sid}
		tab.add(sid, subs[sid])
	}
	again := &closer{"b2"}
	tab[tab.index("b")].sub = again // replaced in place, as a refresh does
	subs["b"] = again
	if len(tab) != 4 {
		t.Fatalf("%d entries after a replacement, want 4", len(tab))
	}
	if got := tab.removeAt(tab.index("a")); got != subs["a"] {
		t.Fatalf("removing a gave %v", got)
	}
	if i := tab.index("a"); i != -1 {
		t.Fatalf("a removed is at %d, want -1", i)
	}
	delete(subs, "a")
	for sid, want := range subs {
		if got := tab.get(sid); got != want {
			t.Fatalf("get(%s) = %v, want %v", sid, got, want)
		}
	}
	if tab.get("a") != nil || tab.get("x") != nil {
		t.Fatal("a removed or unknown sid has a subscription")
	}
	for i := len(tab) - 1; i >= 0; i-- { // as sidFree and cleanup remove while they look
		if tab[i].sid != "c" {
			tab.removeAt(i)
		}
	}
	if len(tab) != 1 || tab.get("c") != subs["c"] {
		t.Fatalf("after removing all but c: %v", tab)
	}
}
