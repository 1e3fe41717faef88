//go:build unix

package data

import (
	"os"
	"syscall"
)

// mmapFile maps a file read-only; unmap releases it.
func mmapFile(fd *os.File, size int) ([]byte, error) {
	return syscall.Mmap(int(fd.Fd()), 0, size, syscall.PROT_READ, syscall.MAP_SHARED)
}

func munmap(b []byte) error { return syscall.Munmap(b) }
