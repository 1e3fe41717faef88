package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

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

Concurrent requests of one kind (frames, steps, stream or not) wait in a bounded queue and run as
one batched generation of up to --max-batch prompts. SIGINT/SIGTERM: stop admitting (503), finish
every admitted request, exit.`,
	Example: `  fewstep serve --model runs/demo-.../export --addr 127.0.0.1:8080`,
	Args:    cobra.NoArgs,
	RunE:    runServe,
}

func init() {
	f := serveCmd.Flags()
	f.String("model", "", "exported student folder (required)")
	f.String("device", "cpu", "cpu | cuda | cuda:N")
	f.String("addr", "127.0.0.1:8080", "listen address")
	f.Int("max-frames", 0, "latent frames a request may ask for (0: 4 × the recipe's)")
	f.Int("max-prompts", 16, "prompts per request")
	f.Int("max-batch", 16, "prompts merged into one generation")
	f.Int("max-queue", 256, "requests waiting; more get 429")
	f.Int64("max-body", 8<<20, "request body bytes; more get 413")
	f.Duration("batch-wait", 2*time.Millisecond, "how long a batch waits for more requests")
	f.Int("scale", 1, "PNG frames: pixel upscaling")
	rootCmd.AddCommand(serveCmd)
}

func runServe(cmd *cobra.Command, _ []string) error {
	fl := cmd.Flags()
	model, _ := fl.GetString("model")
	if model == "" {
		return fmt.Errorf("serve: --model EXPORT_DIR is required")
	}
	dev, _ := fl.GetString("device")
	p, err := pipeline.Open(model, dev)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
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
	fmt.Fprintf(cmd.OutOrStdout(), "serve: %s (%s, %s, latents [%d, %d, %d, %d]) on %s at http://%s/\n",
		model, r.Objective, r.Sampler, r.LatentChannels, r.Frames, r.Height, r.Width, p.Dev.Name(), ln.Addr())
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
