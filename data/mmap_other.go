//go:build !unix

package data

import (
	"io"
	"os"
)

// mmapFile reads the file into memory where mmap is not available (the zero-copy path then
// starts from this one read).
func mmapFile(fd *os.File, size int) ([]byte, error) {
	b := make([]byte, size)
	_, err := io.ReadFull(fd, b)
	return b, err
}

func munmap([]byte) error { return nil }
