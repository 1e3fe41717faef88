//go:build unix

package trainer

import (
	"errors"
	"os"
	"syscall"
)

// haveFlock: the lock is an flock, which the kernel releases when its process dies.
const haveFlock = true

// tryLock takes an exclusive flock on f without waiting; false when another process holds it.
func tryLock(f *os.File) (bool, error) {
	err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return false, nil
	}
	return err == nil, err
}

// processAlive reports whether pid names a running process of this host.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
