//go:build unix

package data

import (
	"syscall"
	"time"
)

// cpuTime is the CPU time (user + system) this process has used: a throughput measure that other
// processes sharing the cores disturb far less than wall time does.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
