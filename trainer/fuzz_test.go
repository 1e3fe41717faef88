package trainer

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzStateJSON: any state.json is refused or gives a state Restore can rely on (step >= 0, AdamW
// counts within [0, step], a loader cursor), which marshals back to the same state.
func FuzzStateJSON(f *testing.F) {
	good := state{Step: 12, Objective: "dmd", Seed: 3, RNG: "stateless", Updates: map[string]int{"student": 6, "critic": 12},
		Loader: []byte(`{"epoch":0,"batch":3,"seed":3,"rank":0,"world":1,"rows":64,"batch_size":8}`)}
	b, _ := json.MarshalIndent(good, "", "  ")
	f.Add(b)
	f.Add([]byte(`{"step":-5,"objective":"dmd","loader_cursor":"e30="}`))
	f.Add([]byte(`{"step":1,"objective":"x","adamw_steps":{"student":2},"loader_cursor":"e30="}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseState(b)
		if err != nil {
			return
		}
		if st.Step < 0 || st.Objective == "" || len(st.Loader) == 0 {
			t.Fatalf("accepted %+v", st)
		}
		for name, u := range st.Updates {
			if u < 0 || u > st.Step {
				t.Fatalf("accepted adamw_steps %s = %d at step %d", name, u, st.Step)
			}
		}
		back, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		again, err := parseState(back)
		if err != nil || !reflect.DeepEqual(again, st) {
			t.Fatalf("state %+v does not survive a round trip: %+v, %v", st, again, err)
		}
	})
}
