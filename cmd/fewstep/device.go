package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/fewstep/fewstep/kernels"
	"github.com/fewstep/fewstep/kernels/cuda"
)

// openBackend opens the engine backend named by a --device flag: "cpu", "cuda" (GPU 0) or "cuda:N".
// Without a usable GPU, "cuda" returns an error that says why (no driver, driver too old, no device).
func openBackend(name string) (kernels.Device, error) {
	if name == "cpu" {
		return kernels.CPU(), nil
	}
	g, err := openCUDA(name)
	if err != nil {
		return nil, err
	}
	return g, nil
}

// openCUDA opens "cuda" or "cuda:N" as the concrete CUDA device (graphs, events, GEMM modes).
func openCUDA(name string) (*cuda.Device, error) {
	ord := 0
	switch {
	case name == "cuda":
	case strings.HasPrefix(name, "cuda:"):
		n, err := strconv.Atoi(name[5:])
		if err != nil || n < 0 {
			return nil, fmt.Errorf("--device %q: want cuda:N with N a GPU ordinal", name)
		}
		ord = n
	default:
		return nil, fmt.Errorf("--device %q: want cpu, cuda or cuda:N", name)
	}
	d, err := cuda.New(ord)
	if err != nil {
		return nil, fmt.Errorf("--device %s: %w", name, err)
	}
	return d, nil
}
