package cuda

import (
	"fmt"
	"unsafe"

	"github.com/ebitengine/purego"
)

// blasLt holds the cuBLASLt entry points.
type blasLt struct {
	lib, handle uintptr
	version     uintptr

	create, getVersion, descCreate, descSetAttr, descDestroy, layoutCreate, layoutDestroy,
	prefCreate, prefSetAttr, prefDestroy, heuristic, matmul uintptr
	layoutSetAttr uintptr // cublasLtMatrixLayoutSetAttribute (strided batches)
}

// cuBLASLt / CUDA enums used here (cublasLt.h, library_types.h).
const (
	cudaR32F  = 0
	cudaR16F  = 2
	cudaR16BF = 14

	computeF32     = 68 // CUBLAS_COMPUTE_32F: fp32 accumulate (bf16 operands or full fp32)
	computeF32TF32 = 77 // CUBLAS_COMPUTE_32F_FAST_TF32

	descTransA     = 3
	descTransB     = 4
	descEpilogue   = 7
	descBiasPtr    = 8
	descAuxPtr     = 11 // CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER
	descAuxLD      = 12 // CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD
	descBiasDType  = 26
	descBiasBatch  = 10 // CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE (int64): elements between the batch's bias vectors
	layoutBatch    = 5  // CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT (int32)
	layoutBatchOff = 6  // CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET (int64): elements between the batch's matrices
	epilogueDef    = 1
	epilogueBias   = 4
	epilogueGELU   = 32  // CUBLASLT_EPILOGUE_GELU (the tanh form, as PyTorch's _addmm_activation uses it)
	epilogueGBias  = 36  // CUBLASLT_EPILOGUE_GELU_BIAS: GELU(x + bias)
	epilogueGAux   = 160 // CUBLASLT_EPILOGUE_GELU_AUX: GELU(x), x stored in the aux matrix
	epilogueGAuxB  = 164 // CUBLASLT_EPILOGUE_GELU_AUX_BIAS: GELU(x + bias), x + bias stored in the aux matrix
	prefMaxWSBytes = 1
	prefMinAlignA  = 5 // CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES (uint32; B, C, D follow)
	opN            = 0
	opT            = 1

	heurResultSize = 96 // cublasLtMatmulHeuristicResult_t: algo (64 B), workspaceSize, state, wavesCount, reserved[4]
	ltWorkspace    = 32 << 20
)

func loadBlasLt() (*blasLt, error) {
	h, name, err := dlopenFirst("libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so")
	if err != nil {
		return nil, fmt.Errorf("cuBLASLt not found: libcublasLt.so.13 / .12 (%v)", err)
	}
	b := &blasLt{lib: h}
	if miss := resolve(h, []dlsym{
		{&b.create, "cublasLtCreate"}, {&b.getVersion, "cublasLtGetVersion"},
		{&b.descCreate, "cublasLtMatmulDescCreate"}, {&b.descSetAttr, "cublasLtMatmulDescSetAttribute"},
		{&b.descDestroy, "cublasLtMatmulDescDestroy"}, {&b.layoutCreate, "cublasLtMatrixLayoutCreate"},
		{&b.layoutDestroy, "cublasLtMatrixLayoutDestroy"}, {&b.prefCreate, "cublasLtMatmulPreferenceCreate"},
		{&b.prefSetAttr, "cublasLtMatmulPreferenceSetAttribute"}, {&b.prefDestroy, "cublasLtMatmulPreferenceDestroy"},
		{&b.heuristic, "cublasLtMatmulAlgoGetHeuristic"}, {&b.matmul, "cublasLtMatmul"},
		{&b.layoutSetAttr, "cublasLtMatrixLayoutSetAttribute"},
	}); miss != "" {
		return nil, fmt.Errorf("%s lacks %s", name, miss)
	}
	if err := b.call("cublasLtCreate", b.create, uintptr(unsafe.Pointer(&b.handle))); err != nil {
		return nil, err
	}
	b.version, _, _ = purego.SyscallN(b.getVersion)
	return b, nil
}

// call runs a cuBLASLt entry point and names it in the error. Marked like drv.call, for the same
// reason: its callers pass addresses of locals (handles written back, attribute values read).
//
//go:uintptrescapes
func (b *blasLt) call(name string, fn uintptr, args ...uintptr) error {
	r, _, _ := purego.SyscallN(fn, args...)
	if r&0xffffffff != 0 {
		return fmt.Errorf("cuda: %s failed: cublasStatus %d", name, r&0xffffffff)
	}
	return nil
}

// gemmKey identifies one cached matmul plan (column-major, cuBLAS's view).
type gemmKey struct {
	transA, transB int
	m, n, k        int
	lda, ldb, ldd  int
	ta, tb, td     int // cudaDataType of A, B, C=D
	compute        int
	epi            int // cublasLtEpilogue_t (0: the default)
	biasDType      int // the bias's data type, where epi has one
	auxLD          int // the aux matrix's leading dimension, where epi has one
	// a strided batch (batch > 1): A, B, D and the bias advance by sa, sb, sd, sbias elements from
	// one GEMM of the batch to the next (0: the same matrix for all, e.g. a shared input)
	batch             int
	sa, sb, sd, sbias int
	align             int // with batch: the bytes every matrix of the batch is aligned to (≤ 256)
}

// epiHasBias reports whether epilogue ep reads a bias (BIAS_POINTER).
func epiHasBias(ep int) bool {
	switch ep {
	case epilogueBias, epilogueGBias, epilogueGAuxB:
		return true
	}
	return false
}

// gemmPlan is the descriptors and the chosen algorithm for one gemmKey.
type gemmPlan struct {
	desc, la, lb, ld uintptr
	algo             [64]byte
	ok               bool // a heuristic algorithm was found
}

func (b *blasLt) plan(k gemmKey) (*gemmPlan, error) {
	p := &gemmPlan{}
	scale := cudaR32F
	if err := b.call("cublasLtMatmulDescCreate", b.descCreate, uintptr(unsafe.Pointer(&p.desc)), uintptr(k.compute), uintptr(scale)); err != nil {
		return nil, err
	}
	ta, tb := int32(k.transA), int32(k.transB)
	if err := b.call("cublasLtMatmulDescSetAttribute(TRANSA)", b.descSetAttr, p.desc, descTransA, uintptr(unsafe.Pointer(&ta)), 4); err != nil {
		return nil, err
	}
	if err := b.call("cublasLtMatmulDescSetAttribute(TRANSB)", b.descSetAttr, p.desc, descTransB, uintptr(unsafe.Pointer(&tb)), 4); err != nil {
		return nil, err
	}
	if k.epi != 0 {
		ep := int32(k.epi)
		if err := b.call("cublasLtMatmulDescSetAttribute(EPILOGUE)", b.descSetAttr, p.desc, descEpilogue, uintptr(unsafe.Pointer(&ep)), 4); err != nil {
			return nil, err
		}
	}
	if epiHasBias(k.epi) {
		bt := int32(k.biasDType)
		if err := b.call("cublasLtMatmulDescSetAttribute(BIAS_DATA_TYPE)", b.descSetAttr, p.desc, descBiasDType, uintptr(unsafe.Pointer(&bt)), 4); err != nil {
			return nil, err
		}
	}
	if k.auxLD != 0 {
		ld := int64(k.auxLD)
		if err := b.call("cublasLtMatmulDescSetAttribute(EPILOGUE_AUX_LD)", b.descSetAttr, p.desc, descAuxLD, uintptr(unsafe.Pointer(&ld)), 8); err != nil {
			return nil, err
		}
	}
	// op(A) is m×k, op(B) is k×n, D is m×n, all column-major.
	ar, ac := k.m, k.k
	if k.transA == opT {
		ar, ac = k.k, k.m
	}
	br, bc := k.k, k.n
	if k.transB == opT {
		br, bc = k.n, k.k
	}
	if err := b.call("cublasLtMatrixLayoutCreate(A)", b.layoutCreate, uintptr(unsafe.Pointer(&p.la)), uintptr(k.ta), uintptr(ar), uintptr(ac), uintptr(k.lda)); err != nil {
		return nil, err
	}
	if err := b.call("cublasLtMatrixLayoutCreate(B)", b.layoutCreate, uintptr(unsafe.Pointer(&p.lb)), uintptr(k.tb), uintptr(br), uintptr(bc), uintptr(k.ldb)); err != nil {
		return nil, err
	}
	if err := b.call("cublasLtMatrixLayoutCreate(D)", b.layoutCreate, uintptr(unsafe.Pointer(&p.ld)), uintptr(k.td), uintptr(k.m), uintptr(k.n), uintptr(k.ldd)); err != nil {
		return nil, err
	}
	if k.batch > 1 {
		if err := b.batched(p, k); err != nil {
			return nil, err
		}
	}
	var pref uintptr
	if err := b.call("cublasLtMatmulPreferenceCreate", b.prefCreate, uintptr(unsafe.Pointer(&pref))); err != nil {
		return nil, err
	}
	defer purego.SyscallN(b.prefDestroy, pref)
	ws := uint64(ltWorkspace)
	if err := b.call("cublasLtMatmulPreferenceSetAttribute", b.prefSetAttr, pref, prefMaxWSBytes, uintptr(unsafe.Pointer(&ws)), 8); err != nil {
		return nil, err
	}
	if k.batch > 1 && k.align > 0 { // the batch's later matrices may be less aligned than the default's 256 bytes
		al := uint32(k.align)
		for a := prefMinAlignA; a < prefMinAlignA+4; a++ {
			if err := b.call("cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT)", b.prefSetAttr, pref, uintptr(a), uintptr(unsafe.Pointer(&al)), 4); err != nil {
				return nil, err
			}
		}
	}
	var res [heurResultSize]byte
	var n int32
	if err := b.call("cublasLtMatmulAlgoGetHeuristic", b.heuristic, b.handle, p.desc, p.la, p.lb, p.ld, p.ld, pref, 1,
		uintptr(unsafe.Pointer(&res[0])), uintptr(unsafe.Pointer(&n))); err != nil || n == 0 {
		return p, nil // no algorithm: the caller falls back
	}
	copy(p.algo[:], res[:64])
	p.ok = true
	return p, nil
}

// batched sets the strided-batch attributes of k on p's layouts (and the bias's batch stride).
func (b *blasLt) batched(p *gemmPlan, k gemmKey) error {
	count := int32(k.batch)
	for _, l := range []struct {
		what   string
		layout uintptr
		stride int
	}{{"A", p.la, k.sa}, {"B", p.lb, k.sb}, {"D", p.ld, k.sd}} {
		off := int64(l.stride)
		if err := b.call("cublasLtMatrixLayoutSetAttribute("+l.what+" BATCH_COUNT)", b.layoutSetAttr, l.layout, layoutBatch,
			uintptr(unsafe.Pointer(&count)), 4); err != nil {
			return err
		}
		if err := b.call("cublasLtMatrixLayoutSetAttribute("+l.what+" STRIDED_BATCH_OFFSET)", b.layoutSetAttr, l.layout, layoutBatchOff,
			uintptr(unsafe.Pointer(&off)), 8); err != nil {
			return err
		}
	}
	if epiHasBias(k.epi) {
		bs := int64(k.sbias)
		if err := b.call("cublasLtMatmulDescSetAttribute(BIAS_BATCH_STRIDE)", b.descSetAttr, p.desc, descBiasBatch, uintptr(unsafe.Pointer(&bs)), 8); err != nil {
			return err
		}
	}
	return nil
}
