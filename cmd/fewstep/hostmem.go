package main

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// hostMemory is the machine's memory in bytes (MemTotal of /proc/meminfo; 1 TiB where unknown), the
// bound a size read from a flag or a file is checked against before it is allocated.
func hostMemory() int64 {
	f, err := os.Open("/proc/meminfo")
	if err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
				kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
				if err == nil && kb > 0 {
					return kb << 10
				}
			}
		}
	}
	return 1 << 40
}
