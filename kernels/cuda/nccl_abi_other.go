//go:build !amd64 && !arm64

package cuda

import (
	"fmt"
	"runtime"
)

// initRank: ncclCommInitRank takes its 128-byte id by value, which is bound for amd64 and arm64
// only (nccl_abi_amd64.go, nccl_abi_arm64.go).
func (n *ncclLib) initRank(comm *uintptr, nranks, rank int, id *[NCCLUniqueIDBytes]byte) error {
	return fmt.Errorf("nccl: ncclCommInitRank is not bound on %s", runtime.GOARCH)
}
