package configs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// The built-in files are the files of this folder, byte for byte.
func TestBuiltInMatchesFolder(t *testing.T) {
	for _, name := range []string{"demo.yaml", "dmd.yaml", "teacher/config.json", "teacher/diffusion_pytorch_model.safetensors"} {
		disk, err := os.ReadFile(filepath.FromSlash(name))
		if err != nil {
			t.Fatal(err)
		}
		b, err := Read(Prefix + name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, disk) {
			t.Errorf("%s: built-in copy differs from the file", name)
		}
		if !Has(Prefix + name) {
			t.Errorf("Has(%s) = false", name)
		}
	}
	if Has("configs/nothere.yaml") || Has("/etc/passwd") || Has("configs/teacher") || Has("demo.yaml") {
		t.Error("Has reports a file that is not built in")
	}
	dir := t.TempDir()
	p, err := Materialize("configs/teacher/config.json", dir)
	if err != nil {
		t.Fatal(err)
	}
	if p != filepath.Join(dir, "teacher", "config.json") {
		t.Errorf("materialized at %s", p)
	}
	if got, _ := os.ReadFile(p); !bytes.Equal(got, mustRead(t, "teacher/config.json")) {
		t.Error("materialized bytes differ")
	}
	if _, err := Materialize("configs/nothere.yaml", dir); err == nil {
		t.Error("Materialize of a missing file: no error")
	}
}

func mustRead(t *testing.T, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
