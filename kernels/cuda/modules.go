package cuda

import (
	"bufio"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"unsafe"
)

// The kernels, built by scripts/build-kernels.sh on a GPU machine (nvcc 13.0): one fatbin per
// kernels/cuda/<family>.cu holding an sm_90a cubin and compute_80 PTX, and a MANIFEST line per
// fatbin with the SHA-256 of the sources it was built from (TestArtifactsFresh checks them).
//
//go:embed build
var artifacts embed.FS

// KernelsDirEnv names a folder of fatbins that replaces the embedded ones (the GPU test run builds
// the kernels and tests them in one call this way).
const KernelsDirEnv = "FEWSTEP_CUDA_KERNELS"

// SourceHash is the hash a fatbin of family.cu is stamped with: SHA-256 of the .cu file followed by
// every .cuh of the folder in name order (scripts/build-kernels.sh computes the same).
func SourceHash(dir, cu string) (string, error) {
	h := sha256.New()
	b, err := os.ReadFile(filepath.Join(dir, cu))
	if err != nil {
		return "", err
	}
	h.Write(b)
	hdrs, _ := filepath.Glob(filepath.Join(dir, "*.cuh"))
	sort.Strings(hdrs)
	for _, p := range hdrs {
		b, err := os.ReadFile(p)
		if err != nil {
			return "", err
		}
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Manifest reads a MANIFEST: fatbin name → source hash.
func Manifest(data []byte) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && !strings.HasPrefix(f[0], "#") {
			m[f[0]] = f[1]
		}
	}
	return m
}

// loadModules loads every fatbin (embedded, or from $FEWSTEP_CUDA_KERNELS).
func (d *Device) loadModules() error {
	var fsys fs.FS = artifacts
	root, pat := "build", "build/*.fatbin"
	if dir := os.Getenv(KernelsDirEnv); dir != "" {
		fsys, root, pat = os.DirFS(dir), dir, "*.fatbin"
	}
	names, err := fs.Glob(fsys, pat)
	if err != nil {
		return err
	}
	if len(names) == 0 {
		return fmt.Errorf("cuda: no kernel fatbins in %s (run scripts/build-kernels.sh on a GPU machine)", root)
	}
	for _, n := range names {
		img, err := fs.ReadFile(fsys, n)
		if err != nil {
			return err
		}
		img = append(img, 0) // keeps a PTX image NUL-terminated; harmless for a fatbin
		// With lazy loading (CUDA_MODULE_LOADING=LAZY, if a user sets it) the driver reads the
		// image again when a function is first fetched: it stays alive as long as the module.
		d.images = append(d.images, img)
		var m uintptr
		if err := d.drv.call("cuModuleLoadData("+filepath.Base(n)+")", d.drv.cuModuleLoadData, uintptr(unsafe.Pointer(&m)), uintptr(unsafe.Pointer(&img[0]))); err != nil {
			return fmt.Errorf("%w (the kernels need a CUDA 13 driver ≥ 580 and an sm_80+ GPU)", err)
		}
		d.mods = append(d.mods, m)
	}
	return nil
}
