package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fewstep/fewstep/config"
	"github.com/fewstep/fewstep/pipeline"
	"github.com/fewstep/fewstep/serve"
	"github.com/spf13/cobra"
)

// `fewstep serve`: the HTTP server over the library (serve/, docs/serve.md).

var serveCmd = &cobra.Command{
	Use:   "serve",
	Short: "Serve a student over HTTP: batched generation, streaming of causal students, a web page",
	Long: `Serves an exported student (or a checkpoint folder: weights, config.json, recipe.json).

  POST /v1/generate   {"captions": [...]} or {"embeddings": [[[...text_dim]...]...]}, "seeds",
                      "frames", "steps", "output": png | latents, "stream": true (Server-Sent Events,
                      one "chunk" event per chunk as it is sampled; causal students)
  GET  /v1/stream     ?caption=...&seed=...&frames=...: one caption streamed (the page's EventSource)
  GET  /              a page that plays a streamed synthetic video as it arrives
  GET  /healthz       ok (503 while shutting down)
  GET  /metrics       Prometheus text: requests by status, queue length, batches, videos, latency

How to sample is the model folder's recipe.json. A causal student streams with the KV-cache window
of the job where it sets one (model.local_attn_frames, model.sink_frames), as sample and eval do:
the job is --config, else the folder's fewstep_job.yaml (an export) or job.yaml (a checkpoint),
with --set on top (e.g. --set model.local_attn_frames=6).

Concurrent requests of one kind (frames, steps, stream or not) wait in a bounded queue and run as
one batched generation of up to --max-batch prompts. SIGINT/SIGTERM: stop admitting (503), finish
every admitted request, exit.`,
	Example: `  fewstep serve --model runs/demo-.../export --addr 127.0.0.1:8080
  fewstep serve --model runs/selfforcing/export --set model.local_attn_frames=6`,
	Args: cobra.NoArgs,
	RunE: runServe,
}

func init() {
	f := serveCmd.Flags()
	f.String("model", "", "exported student folder, or a run folder holding its export (RUN/export) (required)")
	f.String("device", "cpu", "cpu | cuda | cuda:N")
	f.String("addr", "127.0.0.1:8080", "listen address")
	f.Int("max-frames", 0, "latent frames a request may ask for (0: 4 × the recipe's)")
	f.Int("max-prompts", 16, "prompts per request")
	f.Int("max-batch", 16, "prompts merged into one generation")
	f.Int("max-queue", 256, "requests waiting; more get 429")
	f.Int64("max-body", 8<<20, "request body bytes; more get 413")
	f.Duration("batch-wait", 2*time.Millisecond, "how long a batch waits for more requests")
	f.Int("scale", 1, "PNG frames: pixel upscaling")
	addJobFlags(serveCmd)
	rootCmd.AddCommand(serveCmd)
}

func runServe(cmd *cobra.Command, _ []string) error {
	fl := cmd.Flags()
	model, _ := fl.GetString("model")
	if model == "" {
		return fmt.Errorf("serve: --model EXPORT_DIR is required")
	}
	p, err := openServe(cmd, model)
	if err != nil {
		return err
	}
	defer p.Close()
	var o serve.Options
	o.MaxFrames, _ = fl.GetInt("max-frames")
	o.MaxPrompts, _ = fl.GetInt("max-prompts")
	o.MaxBatch, _ = fl.GetInt("max-batch")
	o.MaxQueue, _ = fl.GetInt("max-queue")
	o.MaxBody, _ = fl.GetInt64("max-body")
	o.BatchWait, _ = fl.GetDuration("batch-wait")
	o.Scale, _ = fl.GetInt("scale")
	s := serve.New(p, o)
	addr, _ := fl.GetString("addr")
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		s.Close()
		return fmt.Errorf("serve: %w", err)
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	r := p.Recipe
	window := ""
	if r.Causal {
		window = fmt.Sprintf(", KV window %d frames + %d sink (0: unbounded)", r.LocalFrames, r.SinkFrames)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "serve: %s (%s, %s, latents [%d, %d, %d, %d]%s) on %s at http://%s/\n",
		model, r.Objective, r.Sampler, r.LatentChannels, r.Frames, r.Height, r.Width, window, p.Dev.Name(), ln.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		s.Close()
		return err
	case <-ctx.Done():
	}
	fmt.Fprintln(cmd.ErrOrStderr(), "serve: shutting down: finishing the requests in flight")
	s.Drain()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	err = srv.Shutdown(sctx)
	s.Close()
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// serveJobFiles are the job files a model folder may hold: an export's, then a checkpoint's.
var serveJobFiles = []string{"fewstep_job.yaml", "job.yaml"}

// openServe opens --model on --device and applies the job's KV-cache window (pipeline.JobWindow,
// as sample and eval): the job is --config, else the model folder's job file, each with --set;
// without either and without --set the recipe's window stands.
func openServe(cmd *cobra.Command, model string) (*pipeline.Pipeline, error) {
	fl := cmd.Flags()
	dev, _ := fl.GetString("device")
	p, err := pipeline.Open(model, dev)
	if err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	dir := filepath.Dir(p.Weights) // the folder opened: --model, a weights file's, or a run folder's export
	sets, _ := fl.GetStringArray("set")
	var job *config.Job
	switch {
	case fl.Changed("config"):
		job, err = loadJob(cmd)
	default:
		for _, n := range serveJobFiles {
			if jp := filepath.Join(dir, n); fileExists(jp) {
				if job, err = config.Load(jp, sets); err == nil {
					err = printJob(cmd, job, jp)
				}
				break
			}
		}
		if job == nil && err == nil && len(sets) > 0 { // no job file: the defaults and --set
			job, err = loadJob(cmd)
		}
	}
	if err == nil && job != nil {
		err = p.UseJobWindow(job)
	}
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("serve: %w", err)
	}
	return p, nil
}
