package main

import "github.com/fewstep/fewstep/trainer"

// hostMemory is the machine's memory in bytes (trainer.HostMemory; 1 TiB where unknown), the bound a
// size read from a flag or a file is checked against before it is allocated.
func hostMemory() int64 {
	if m := trainer.HostMemory(); m > 0 {
		return m
	}
	return 1 << 40
}
