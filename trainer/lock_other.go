//go:build !unix

package trainer

import "os"

// haveFlock: without flock the file's content is the lock.
const haveFlock = false

func tryLock(*os.File) (bool, error) { return true, nil }

func processAlive(int) bool { return true }
