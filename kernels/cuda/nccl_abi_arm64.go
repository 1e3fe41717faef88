package cuda

import "unsafe"

// initRank is ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank). The
// id is a 128-byte struct passed by value: on arm64 (AAPCS64) a composite over 16 bytes is passed
// as a pointer to a copy made by the caller, in the argument's register.
func (n *ncclLib) initRank(comm *uintptr, nranks, rank int, id *[NCCLUniqueIDBytes]byte) error {
	cp := *id
	return n.call("ncclCommInitRank", n.commInitRank, uintptr(unsafe.Pointer(comm)), uintptr(nranks), uintptr(unsafe.Pointer(&cp)), uintptr(rank))
}
