package pipeline_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/eval"
	"github.com/fewstep/fewstep/pipeline"
)

// demoExport makes a folder shaped like `fewstep export --from RUN` of the demo: the shipped
// teacher's weights and config.json (what the demo's dmd student starts as, at step 0) and the
// recipe of configs/demo.yaml's job. After `fewstep demo`, open RUN/export instead.
func demoExport() string {
	dir, _ := os.MkdirTemp("", "fewstep-example-")
	job, err := config.Load(filepath.Join("..", "configs", "demo.yaml"), nil)
	if err != nil {
		panic(err)
	}
	for _, f := range []string{"config.json", "diffusion_pytorch_model.safetensors"} {
		b, err := os.ReadFile(filepath.Join("..", "configs", "teacher", f))
		if err != nil {
			panic(err)
		}
		os.WriteFile(filepath.Join(dir, f), b, 0o644)
	}
	if _, err := pipeline.WriteRecipe(dir, job); err != nil {
		panic(err)
	}
	return dir
}

// Open a student, encode two captions with the synthetic space's text encoder, and generate their
// videos with the student's own recipe (dmd: 4 steps of predict-x0-and-re-noise). The pixels are
// measured with eval.Analyze: the dominant colour and the direction of motion.
func ExampleOpen() {
	dir := demoExport()
	defer os.RemoveAll(dir)

	p, err := pipeline.Open(dir, "cpu")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()
	captions := []string{"a red disk moving right", "a blue square moving down"}
	req := pipeline.Request{Seeds: []int64{1, 2}}
	for _, c := range captions {
		emb, err := p.EncodeCaption(c)
		if err != nil {
			fmt.Println(err)
			return
		}
		req.Prompts = append(req.Prompts, emb)
	}
	out, err := p.Generate(context.Background(), req)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s, %d steps: latents [%d, %d, %d, %d] per video, NFE %d\n", p.Recipe.Sampler, len(p.Recipe.Timesteps), out.C, out.F, out.H, out.W, out.NFE)
	for i, pix := range out.Pixels {
		a := eval.Analyze(pix, out.F, 4*out.H, 4*out.W)
		fmt.Printf("%q: %s, moving %s\n", captions[i], a.Nearest, a.Direction)
	}
	// Output:
	// fewstep, 4 steps: latents [48, 8, 4, 4] per video, NFE 4
	// "a red disk moving right": red, moving right
	// "a blue square moving down": blue, moving down
}
