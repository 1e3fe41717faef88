// Package configs holds the project's job files and the shipped demo teacher, built into the
// binary so that `fewstep demo` runs from any working directory (docs/README.md).
package configs

import (
	"bytes"
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// FS is this folder as built into the binary: every job (*.yaml) and the demo teacher
// (teacher/config.json, teacher/diffusion_pytorch_model.safetensors, bf16, 14 MB).
//
//go:embed *.yaml teacher/config.json teacher/diffusion_pytorch_model.safetensors teacher/TRAINING.md
var FS embed.FS

// Prefix is how jobs name the files of this folder: paths relative to the repository root.
const Prefix = "configs/"

// Read returns a built-in file by its repository path ("configs/demo.yaml") or its name in
// this folder ("demo.yaml").
func Read(path string) ([]byte, error) {
	b, err := FS.ReadFile(strings.TrimPrefix(filepath.ToSlash(path), Prefix))
	if err != nil {
		return nil, fmt.Errorf("configs: %s is not built into this binary", path)
	}
	return b, nil
}

// Has says whether path, relative to the repository root ("configs/teacher/config.json"), names a
// built-in file.
func Has(path string) bool {
	name, ok := strings.CutPrefix(filepath.ToSlash(path), Prefix)
	if !ok {
		return false
	}
	st, err := fs.Stat(FS, name)
	return err == nil && !st.IsDir()
}

// Materialize writes the built-in file that path names ("configs/teacher/config.json") into dir,
// under its name in this folder (dir/teacher/config.json), and returns the path written. A file
// already there with the same bytes is kept.
func Materialize(path, dir string) (string, error) {
	b, err := Read(path)
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, filepath.FromSlash(strings.TrimPrefix(filepath.ToSlash(path), Prefix)))
	if have, err := os.ReadFile(out); err == nil && bytes.Equal(have, b) {
		return out, nil
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return "", err
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return "", err
	}
	return out, os.Rename(tmp, out)
}
