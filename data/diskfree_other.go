//go:build !linux

package data

func diskFree(string) (int64, bool) { return 0, false }
