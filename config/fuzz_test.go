package config

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// FuzzJobYAML: any job file loads into a valid job or gives an error, never a panic; a job that
// loads saves to YAML that loads back to a job which saves and loads to itself.
func FuzzJobYAML(f *testing.F) {
	shipped, _ := filepath.Glob(filepath.Join("..", "configs", "*.yaml"))
	for _, p := range shipped {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("train:\n  steps: 3\nroles:\n  student:\n    lr: .nan\n"))
	f.Add([]byte("params:\n  x: [1, {y: .inf}]\n"))
	f.Add([]byte("data:\n  synth:\n    count: 99999999999999999999\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		p := filepath.Join(dir, "job.yaml")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		job, err := load(p, nil, nil)
		if err != nil {
			return
		}
		if err := job.Validate(); err != nil {
			t.Fatalf("load accepted a job Validate refuses: %v", err)
		}
		// Save and load again: paths may be resolved once (relative to the file), after which the
		// job is a fixed point of save/load.
		var prev *Job
		for i := 0; i < 2; i++ {
			q := filepath.Join(dir, "saved.yaml")
			if err := Save(job, q); err != nil {
				t.Fatalf("saving an accepted job: %v", err)
			}
			again, err := load(q, nil, nil)
			if err != nil {
				t.Fatalf("the saved job does not load: %v", err)
			}
			prev, job = job, again
		}
		if !reflect.DeepEqual(prev, job) {
			t.Fatalf("job changed in a second save/load round trip:\n%+v\n%+v", prev, job)
		}
	})
}
