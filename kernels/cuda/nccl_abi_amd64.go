package cuda

import "unsafe"

// initRank is ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank). The
// id is a 128-byte struct passed by value: on x86-64 (System V) it goes on the stack, in the
// caller's argument area, while comm, nranks and rank take the first three integer registers.
// purego passes arguments past the sixth on the stack in order, so the id follows three unused
// register slots as its sixteen 8-byte words. (comm's conversion stays inside the call's argument
// list, where go:uintptrescapes on ncclLib.call keeps it valid.)
func (n *ncclLib) initRank(comm *uintptr, nranks, rank int, id *[NCCLUniqueIDBytes]byte) error {
	var w [NCCLUniqueIDBytes / 8]uintptr
	for i := range w {
		w[i] = *(*uintptr)(unsafe.Pointer(&id[8*i]))
	}
	return n.call("ncclCommInitRank", n.commInitRank, uintptr(unsafe.Pointer(comm)), uintptr(nranks), uintptr(rank), 0, 0, 0,
		w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9], w[10], w[11], w[12], w[13], w[14], w[15])
}
