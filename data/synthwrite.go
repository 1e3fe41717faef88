package data

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/fewstep/fewstep/kernels"
)

// SynthOptions sizes a synthetic dataset.
type SynthOptions struct {
	Count   int   `json:"count"`   // training videos
	Heldout int   `json:"heldout"` // held-out videos (evaluation split)
	Frames  int   `json:"frames"`  // F
	Size    int   `json:"size"`    // S (pixels; a multiple of 4)
	TextDim int   `json:"text_dim"`
	Seed    int64 `json:"seed"`
	// DType of the stored latents (float32 by default; bfloat16/float16 for tests of those paths).
	DType kernels.DType `json:"-"`
}

// SynthFiles are the files WriteSynth makes.
type SynthFiles struct {
	Train, Heldout, Meta string
}

// SynthPaths are the file names of a synthetic dataset folder.
func SynthPaths(dir string) SynthFiles {
	return SynthFiles{
		Train:   filepath.Join(dir, "train.arrow"),
		Heldout: filepath.Join(dir, "heldout.arrow"),
		Meta:    filepath.Join(dir, "synth.json"),
	}
}

func (o SynthOptions) check() error {
	switch {
	case o.Count <= 0:
		return fmt.Errorf("data synth: count %d, must be > 0", o.Count)
	case o.Heldout < 0:
		return fmt.Errorf("data synth: heldout %d, must be >= 0", o.Heldout)
	case o.Frames <= 0:
		return fmt.Errorf("data synth: frames %d, must be > 0", o.Frames)
	case o.Size < 16 || o.Size%4 != 0:
		return fmt.Errorf("data synth: size %d, must be a multiple of 4 and >= 16", o.Size)
	case o.TextDim <= 0:
		return fmt.Errorf("data synth: text_dim %d, must be > 0", o.TextDim)
	case o.Count > MaxSynthCount || o.Heldout > MaxSynthCount:
		return fmt.Errorf("data synth: %d + %d videos, the limit is %d per split", o.Count, o.Heldout, MaxSynthCount)
	case o.Frames > 1<<12 || o.Size > 1<<12 || o.TextDim > 1<<16:
		return fmt.Errorf("data synth: frames %d, size %d, text_dim %d: the limits are 4096, 4096, 65536", o.Frames, o.Size, o.TextDim)
	}
	// One video is rendered in float32 RGB on each core before it is encoded.
	if px := int64(3*4) * int64(o.Frames) * int64(o.Size) * int64(o.Size); px > 1<<30 {
		return fmt.Errorf("data synth: frames %d of %d×%d pixels need %s per video to render, more than the limit of 1 GiB", o.Frames, o.Size, o.Size, gib(px))
	}
	return nil
}

// MaxSynthCount bounds each split of a synthetic set.
const MaxSynthCount = 1 << 24

// Bytes estimates the size of the files WriteSynth makes: the latents in their dtype, the text
// embeddings (at most 16 tokens of text_dim float32) and about 256 bytes of id, caption, shapes and
// Arrow framing per row.
func (o SynthOptions) Bytes() int64 {
	es := int64(4)
	if o.DType == kernels.BF16 || o.DType == kernels.F16 {
		es = 2
	}
	h := int64(o.Size / 4)
	row := es*LatentChannels*int64(o.Frames)*h*h + 16*4*int64(o.TextDim) + 256
	return row * int64(o.Count+o.Heldout)
}

func gib(b int64) string { return fmt.Sprintf("%.2f GiB", float64(b)/(1<<30)) }

// SynthRow renders video `index` of a split and encodes it as a dataset row: vae_latent
// [48, F, S/4, S/4] and text_embedding [n_words, text_dim] (float32).
func SynthRow(o SynthOptions, split string, index int) (id, caption string, ts []Tensor) {
	v := SynthVideo(o.Seed, split, index, o.Frames, o.Size)
	h := o.Size / 4
	lat := EncodeLatent(v.Pixels, o.Frames, h, h)
	emb, n := EncodeTextTokens(v.Caption, o.TextDim)
	return v.ID, v.Caption, []Tensor{
		F32Tensor(Latent, []int{LatentChannels, o.Frames, h, h}, lat, o.DType),
		F32Tensor(TextEmb, []int{n, o.TextDim}, emb, kernels.F32),
	}
}

// WriteSynth writes the train and held-out splits to dir/train.arrow and dir/heldout.arrow (Arrow
// IPC, uncompressed) and the options to dir/synth.json. The files are a pure function of the
// options: the same options give byte-identical files. progress (may be nil) is called with the
// number of videos written so far (of Count+Heldout).
func WriteSynth(dir string, o SynthOptions, progress func(done int)) (SynthFiles, error) {
	if err := o.check(); err != nil {
		return SynthFiles{}, err
	}
	p := SynthPaths(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return p, fmt.Errorf("data synth: %w", err)
	}
	// Refuse up front what the disk cannot hold, rather than fill it and fail at the end.
	if free, ok := diskFree(dir); ok && o.Bytes() > free {
		return p, fmt.Errorf("data synth: %d + %d videos of %d frames at %d×%d need about %s in %s, which has %s free",
			o.Count, o.Heldout, o.Frames, o.Size, o.Size, gib(o.Bytes()), dir, gib(free))
	}
	done := 0
	for _, sp := range []struct {
		split, path string
		n           int
	}{{"train", p.Train, o.Count}, {"heldout", p.Heldout, o.Heldout}} {
		if err := writeSplit(sp.path, o, sp.split, sp.n, func(k int) {
			if progress != nil {
				progress(done + k)
			}
		}); err != nil {
			return p, err
		}
		done += sp.n
	}
	meta, _ := json.MarshalIndent(struct {
		SynthOptions
		DType      string      `json:"dtype"`
		Colours    []Colour    `json:"colours"`
		Shapes     []string    `json:"shapes"`
		Directions []Direction `json:"directions"`
		Background Colour      `json:"background"`
	}{o, o.DType.String(), Colours, Shapes, Directions, Background}, "", "  ")
	if err := os.WriteFile(p.Meta, append(meta, '\n'), 0o644); err != nil {
		return p, err
	}
	return p, nil
}

// writeSplit renders n videos on all cores, in blocks, and appends them in index order.
func writeSplit(path string, o SynthOptions, split string, n int, progress func(int)) error {
	w, err := NewWriter(path, []string{Latent, TextEmb}, 256)
	if err != nil {
		return err
	}
	type row struct {
		id, caption string
		ts          []Tensor
	}
	const block = 64
	rows := make([]row, block)
	workers := runtime.GOMAXPROCS(0)
	for start := 0; start < n; start += block {
		m := min(block, n-start)
		var wg sync.WaitGroup
		for g := 0; g < workers; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				for i := g; i < m; i += workers {
					id, c, ts := SynthRow(o, split, start+i)
					rows[i] = row{id, c, ts}
				}
			}(g)
		}
		wg.Wait()
		for i := 0; i < m; i++ {
			if err := w.Append(rows[i].id, rows[i].caption, rows[i].ts...); err != nil {
				w.Abort()
				return err
			}
		}
		progress(start + m)
	}
	return w.Close()
}
