package kernels

// NewCPUFine is a CPU device that splits even the smallest op across its workers, so that tests
// on small shapes exercise the parallel paths (chunk boundaries, per-worker scratch).
func NewCPUFine(threads int) Device {
	d := NewCPU(threads).(*cpuDevice)
	d.pool.minFlops = 1
	return d
}
