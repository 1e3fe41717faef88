#include "textflag.h"

// Vector helpers of the softmax (AVX2/FMA). The exp is exp32's algorithm on 8 lanes:
// x = n·ln2 + r, e^r by its degree-7 Taylor polynomial (Horner), 2^n through the exponent bits;
// inputs are clamped to [−87.3, 88].

DATA expc_hi<>+0(SB)/4, $0x42b00000
DATA expc_hi<>+4(SB)/4, $0x42b00000
DATA expc_hi<>+8(SB)/4, $0x42b00000
DATA expc_hi<>+12(SB)/4, $0x42b00000
DATA expc_hi<>+16(SB)/4, $0x42b00000
DATA expc_hi<>+20(SB)/4, $0x42b00000
DATA expc_hi<>+24(SB)/4, $0x42b00000
DATA expc_hi<>+28(SB)/4, $0x42b00000
GLOBL expc_hi<>(SB), RODATA|NOPTR, $32
DATA expc_lo<>+0(SB)/4, $0xc2ae999a
DATA expc_lo<>+4(SB)/4, $0xc2ae999a
DATA expc_lo<>+8(SB)/4, $0xc2ae999a
DATA expc_lo<>+12(SB)/4, $0xc2ae999a
DATA expc_lo<>+16(SB)/4, $0xc2ae999a
DATA expc_lo<>+20(SB)/4, $0xc2ae999a
DATA expc_lo<>+24(SB)/4, $0xc2ae999a
DATA expc_lo<>+28(SB)/4, $0xc2ae999a
GLOBL expc_lo<>(SB), RODATA|NOPTR, $32
DATA expc_log2e<>+0(SB)/4, $0x3fb8aa3b
DATA expc_log2e<>+4(SB)/4, $0x3fb8aa3b
DATA expc_log2e<>+8(SB)/4, $0x3fb8aa3b
DATA expc_log2e<>+12(SB)/4, $0x3fb8aa3b
DATA expc_log2e<>+16(SB)/4, $0x3fb8aa3b
DATA expc_log2e<>+20(SB)/4, $0x3fb8aa3b
DATA expc_log2e<>+24(SB)/4, $0x3fb8aa3b
DATA expc_log2e<>+28(SB)/4, $0x3fb8aa3b
GLOBL expc_log2e<>(SB), RODATA|NOPTR, $32
DATA expc_ln2hi<>+0(SB)/4, $0x3f318000
DATA expc_ln2hi<>+4(SB)/4, $0x3f318000
DATA expc_ln2hi<>+8(SB)/4, $0x3f318000
DATA expc_ln2hi<>+12(SB)/4, $0x3f318000
DATA expc_ln2hi<>+16(SB)/4, $0x3f318000
DATA expc_ln2hi<>+20(SB)/4, $0x3f318000
DATA expc_ln2hi<>+24(SB)/4, $0x3f318000
DATA expc_ln2hi<>+28(SB)/4, $0x3f318000
GLOBL expc_ln2hi<>(SB), RODATA|NOPTR, $32
DATA expc_ln2lo<>+0(SB)/4, $0xb95e8083
DATA expc_ln2lo<>+4(SB)/4, $0xb95e8083
DATA expc_ln2lo<>+8(SB)/4, $0xb95e8083
DATA expc_ln2lo<>+12(SB)/4, $0xb95e8083
DATA expc_ln2lo<>+16(SB)/4, $0xb95e8083
DATA expc_ln2lo<>+20(SB)/4, $0xb95e8083
DATA expc_ln2lo<>+24(SB)/4, $0xb95e8083
DATA expc_ln2lo<>+28(SB)/4, $0xb95e8083
GLOBL expc_ln2lo<>(SB), RODATA|NOPTR, $32
DATA expc_c7<>+0(SB)/4, $0x39500d01
DATA expc_c7<>+4(SB)/4, $0x39500d01
DATA expc_c7<>+8(SB)/4, $0x39500d01
DATA expc_c7<>+12(SB)/4, $0x39500d01
DATA expc_c7<>+16(SB)/4, $0x39500d01
DATA expc_c7<>+20(SB)/4, $0x39500d01
DATA expc_c7<>+24(SB)/4, $0x39500d01
DATA expc_c7<>+28(SB)/4, $0x39500d01
GLOBL expc_c7<>(SB), RODATA|NOPTR, $32
DATA expc_c6<>+0(SB)/4, $0x3ab60b61
DATA expc_c6<>+4(SB)/4, $0x3ab60b61
DATA expc_c6<>+8(SB)/4, $0x3ab60b61
DATA expc_c6<>+12(SB)/4, $0x3ab60b61
DATA expc_c6<>+16(SB)/4, $0x3ab60b61
DATA expc_c6<>+20(SB)/4, $0x3ab60b61
DATA expc_c6<>+24(SB)/4, $0x3ab60b61
DATA expc_c6<>+28(SB)/4, $0x3ab60b61
GLOBL expc_c6<>(SB), RODATA|NOPTR, $32
DATA expc_c5<>+0(SB)/4, $0x3c088889
DATA expc_c5<>+4(SB)/4, $0x3c088889
DATA expc_c5<>+8(SB)/4, $0x3c088889
DATA expc_c5<>+12(SB)/4, $0x3c088889
DATA expc_c5<>+16(SB)/4, $0x3c088889
DATA expc_c5<>+20(SB)/4, $0x3c088889
DATA expc_c5<>+24(SB)/4, $0x3c088889
DATA expc_c5<>+28(SB)/4, $0x3c088889
GLOBL expc_c5<>(SB), RODATA|NOPTR, $32
DATA expc_c4<>+0(SB)/4, $0x3d2aaaab
DATA expc_c4<>+4(SB)/4, $0x3d2aaaab
DATA expc_c4<>+8(SB)/4, $0x3d2aaaab
DATA expc_c4<>+12(SB)/4, $0x3d2aaaab
DATA expc_c4<>+16(SB)/4, $0x3d2aaaab
DATA expc_c4<>+20(SB)/4, $0x3d2aaaab
DATA expc_c4<>+24(SB)/4, $0x3d2aaaab
DATA expc_c4<>+28(SB)/4, $0x3d2aaaab
GLOBL expc_c4<>(SB), RODATA|NOPTR, $32
DATA expc_c3<>+0(SB)/4, $0x3e2aaaab
DATA expc_c3<>+4(SB)/4, $0x3e2aaaab
DATA expc_c3<>+8(SB)/4, $0x3e2aaaab
DATA expc_c3<>+12(SB)/4, $0x3e2aaaab
DATA expc_c3<>+16(SB)/4, $0x3e2aaaab
DATA expc_c3<>+20(SB)/4, $0x3e2aaaab
DATA expc_c3<>+24(SB)/4, $0x3e2aaaab
DATA expc_c3<>+28(SB)/4, $0x3e2aaaab
GLOBL expc_c3<>(SB), RODATA|NOPTR, $32
DATA expc_c2<>+0(SB)/4, $0x3f000000
DATA expc_c2<>+4(SB)/4, $0x3f000000
DATA expc_c2<>+8(SB)/4, $0x3f000000
DATA expc_c2<>+12(SB)/4, $0x3f000000
DATA expc_c2<>+16(SB)/4, $0x3f000000
DATA expc_c2<>+20(SB)/4, $0x3f000000
DATA expc_c2<>+24(SB)/4, $0x3f000000
DATA expc_c2<>+28(SB)/4, $0x3f000000
GLOBL expc_c2<>(SB), RODATA|NOPTR, $32
DATA expc_one<>+0(SB)/4, $0x3f800000
DATA expc_one<>+4(SB)/4, $0x3f800000
DATA expc_one<>+8(SB)/4, $0x3f800000
DATA expc_one<>+12(SB)/4, $0x3f800000
DATA expc_one<>+16(SB)/4, $0x3f800000
DATA expc_one<>+20(SB)/4, $0x3f800000
DATA expc_one<>+24(SB)/4, $0x3f800000
DATA expc_one<>+28(SB)/4, $0x3f800000
GLOBL expc_one<>(SB), RODATA|NOPTR, $32
DATA expc_bias<>+0(SB)/4, $127
DATA expc_bias<>+4(SB)/4, $127
DATA expc_bias<>+8(SB)/4, $127
DATA expc_bias<>+12(SB)/4, $127
DATA expc_bias<>+16(SB)/4, $127
DATA expc_bias<>+20(SB)/4, $127
DATA expc_bias<>+24(SB)/4, $127
DATA expc_bias<>+28(SB)/4, $127
GLOBL expc_bias<>(SB), RODATA|NOPTR, $32

// func expShiftAVX2(x *float32, n int, m float32, sums *[8]float32)
// x[i] = exp(x[i] − m) for i < n (n a multiple of 8); sums[lane] += the lane's results.
TEXT ·expShiftAVX2(SB), NOSPLIT, $0-32
	MOVQ         x+0(FP), SI
	MOVQ         n+8(FP), CX
	VBROADCASTSS m+16(FP), Y15
	MOVQ         sums+24(FP), DX
	VMOVUPS      (DX), Y14
	SHRQ         $3, CX
	JZ           done

loop:
	VMOVUPS      (SI), Y0
	VSUBPS       Y15, Y0, Y0
	VMINPS       expc_hi<>(SB), Y0, Y0
	VMAXPS       expc_lo<>(SB), Y0, Y0
	VMULPS       expc_log2e<>(SB), Y0, Y1
	VROUNDPS     $0, Y1, Y1
	VMOVAPS      Y0, Y2
	VFNMADD231PS expc_ln2hi<>(SB), Y1, Y2
	VFNMADD231PS expc_ln2lo<>(SB), Y1, Y2
	VMOVUPS      expc_c7<>(SB), Y3
	VFMADD213PS  expc_c6<>(SB), Y2, Y3
	VFMADD213PS  expc_c5<>(SB), Y2, Y3
	VFMADD213PS  expc_c4<>(SB), Y2, Y3
	VFMADD213PS  expc_c3<>(SB), Y2, Y3
	VFMADD213PS  expc_c2<>(SB), Y2, Y3
	VFMADD213PS  expc_one<>(SB), Y2, Y3
	VFMADD213PS  expc_one<>(SB), Y2, Y3
	VCVTPS2DQ    Y1, Y4
	VPADDD       expc_bias<>(SB), Y4, Y4
	VPSLLD       $23, Y4, Y4
	VMULPS       Y4, Y3, Y3
	VMOVUPS      Y3, (SI)
	VADDPS       Y3, Y14, Y14
	ADDQ         $32, SI
	DECQ         CX
	JNZ          loop

done:
	VMOVUPS Y14, (DX)
	VZEROUPPER
	RET

// func maxAVX2(x *float32, n int, lanes *[8]float32)
// lanes[l] = max(lanes[l], x[8i+l]) over i < n/8 (n a multiple of 8).
TEXT ·maxAVX2(SB), NOSPLIT, $0-24
	MOVQ    x+0(FP), SI
	MOVQ    n+8(FP), CX
	MOVQ    lanes+16(FP), DX
	VMOVUPS (DX), Y0
	SHRQ    $3, CX
	JZ      mdone

mloop:
	VMAXPS (SI), Y0, Y0
	ADDQ   $32, SI
	DECQ   CX
	JNZ    mloop

mdone:
	VMOVUPS Y0, (DX)
	VZEROUPPER
	RET
