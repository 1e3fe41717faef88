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
	}
	return nil
}

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
