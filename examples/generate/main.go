// Command generate is the library in a few lines: it opens an exported student (`fewstep demo`,
// then `fewstep export --from RUN` writes RUN/export) and writes one GIF per caption.
//
//	go run ./examples/generate -model runs/demo-.../export "a red disk moving right" "a blue square moving down"
//
// A causal (Self-Forcing) student is streamed: each chunk is reported as it arrives.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/fewstep/fewstep/pipeline"
	"github.com/fewstep/fewstep/sampler"
)

func main() {
	model := flag.String("model", "", "exported student folder (diffusion_pytorch_model.safetensors, config.json, recipe.json)")
	device := flag.String("device", "cpu", "cpu, cuda or cuda:N")
	out := flag.String("out", "generated", "folder for the GIFs")
	seed := flag.Int64("seed", 0, "caption i uses seed+i")
	flag.Parse()
	if err := run(*model, *device, *out, *seed, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "generate:", err)
		os.Exit(1)
	}
}

func run(model, device, out string, seed int64, captions []string) error {
	if model == "" || len(captions) == 0 {
		return fmt.Errorf("usage: generate -model EXPORT_DIR CAPTION...")
	}
	p, err := pipeline.Open(model, device)
	if err != nil {
		return err
	}
	defer p.Close()
	req := pipeline.Request{}
	for i, c := range captions {
		emb, err := p.EncodeCaption(c)
		if err != nil {
			return err
		}
		req.Prompts = append(req.Prompts, emb)
		req.Seeds = append(req.Seeds, seed+int64(i))
	}
	ctx := context.Background()
	if p.Recipe.Causal {
		_, first, err := p.Stream(ctx, req, func(c pipeline.Chunk) error {
			fmt.Printf("chunk %d: latent frames %d..%d\n", c.Index, c.Frame0, c.Frame0+c.Frames-1)
			return nil
		})
		if err != nil {
			return err
		}
		fmt.Printf("first chunk after %v\n", first)
	}
	res, err := p.Generate(ctx, req)
	if err != nil {
		return err
	}
	if res.Pixels == nil {
		return fmt.Errorf("the student's latent space (%s) does not decode here", p.Recipe.LatentSpace)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for i, pix := range res.Pixels {
		path := filepath.Join(out, fmt.Sprintf("%04d.gif", i))
		if err := sampler.WriteGIF(path, pix, res.F, 4*res.H, 4*res.W, 8, 250); err != nil {
			return err
		}
		fmt.Printf("%s  %q (seed %d)\n", path, captions[i], req.Seeds[i])
	}
	fmt.Printf("%s, NFE %d, %.1f ms per video on %s\n", p.Recipe.Sampler, res.NFE, res.Millis, p.Dev.Name())
	return nil
}
