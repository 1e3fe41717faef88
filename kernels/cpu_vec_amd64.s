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

DATA gelu_k0<>+0(SB)/4, $0xbfcc422a
DATA gelu_k0<>+4(SB)/4, $0xbfcc422a
DATA gelu_k0<>+8(SB)/4, $0xbfcc422a
DATA gelu_k0<>+12(SB)/4, $0xbfcc422a
DATA gelu_k0<>+16(SB)/4, $0xbfcc422a
DATA gelu_k0<>+20(SB)/4, $0xbfcc422a
DATA gelu_k0<>+24(SB)/4, $0xbfcc422a
DATA gelu_k0<>+28(SB)/4, $0xbfcc422a
GLOBL gelu_k0<>(SB), RODATA|NOPTR, $32
DATA gelu_k1<>+0(SB)/4, $0xbd922279
DATA gelu_k1<>+4(SB)/4, $0xbd922279
DATA gelu_k1<>+8(SB)/4, $0xbd922279
DATA gelu_k1<>+12(SB)/4, $0xbd922279
DATA gelu_k1<>+16(SB)/4, $0xbd922279
DATA gelu_k1<>+20(SB)/4, $0xbd922279
DATA gelu_k1<>+24(SB)/4, $0xbd922279
DATA gelu_k1<>+28(SB)/4, $0xbd922279
GLOBL gelu_k1<>(SB), RODATA|NOPTR, $32
DATA gelu_q<>+0(SB)/4, $0x3e095d4f
DATA gelu_q<>+4(SB)/4, $0x3e095d4f
DATA gelu_q<>+8(SB)/4, $0x3e095d4f
DATA gelu_q<>+12(SB)/4, $0x3e095d4f
DATA gelu_q<>+16(SB)/4, $0x3e095d4f
DATA gelu_q<>+20(SB)/4, $0x3e095d4f
DATA gelu_q<>+24(SB)/4, $0x3e095d4f
DATA gelu_q<>+28(SB)/4, $0x3e095d4f
GLOBL gelu_q<>(SB), RODATA|NOPTR, $32
DATA gelu_2c<>+0(SB)/4, $0x3fcc422a
DATA gelu_2c<>+4(SB)/4, $0x3fcc422a
DATA gelu_2c<>+8(SB)/4, $0x3fcc422a
DATA gelu_2c<>+12(SB)/4, $0x3fcc422a
DATA gelu_2c<>+16(SB)/4, $0x3fcc422a
DATA gelu_2c<>+20(SB)/4, $0x3fcc422a
DATA gelu_2c<>+24(SB)/4, $0x3fcc422a
DATA gelu_2c<>+28(SB)/4, $0x3fcc422a
GLOBL gelu_2c<>(SB), RODATA|NOPTR, $32

// EXP8(X, T1, T2, R): R = e^X on 8 lanes (exp32's algorithm); clobbers X, T1, T2.
#define EXP8(X, T1, T2, R) \
	VMINPS       expc_hi<>(SB), X, X; \
	VMAXPS       expc_lo<>(SB), X, X; \
	VMULPS       expc_log2e<>(SB), X, T1; \
	VROUNDPS     $0, T1, T1; \
	VFNMADD231PS expc_ln2hi<>(SB), T1, X; \
	VFNMADD231PS expc_ln2lo<>(SB), T1, X; \
	VMOVUPS      expc_c7<>(SB), R; \
	VFMADD213PS  expc_c6<>(SB), X, R; \
	VFMADD213PS  expc_c5<>(SB), X, R; \
	VFMADD213PS  expc_c4<>(SB), X, R; \
	VFMADD213PS  expc_c3<>(SB), X, R; \
	VFMADD213PS  expc_c2<>(SB), X, R; \
	VFMADD213PS  expc_one<>(SB), X, R; \
	VFMADD213PS  expc_one<>(SB), X, R; \
	VCVTPS2DQ    T1, T2; \
	VPADDD       expc_bias<>(SB), T2, T2; \
	VPSLLD       $23, T2, T2; \
	VMULPS       T2, R, R

// func geluAVX2(out, x *float32, n int)
// out = x·σ(2u), u = √(2/π)·(x + 0.044715·x³) (= the tanh form), n a multiple of 8.
TEXT ·geluAVX2(SB), NOSPLIT, $0-24
	MOVQ out+0(FP), DI
	MOVQ x+8(FP), SI
	MOVQ n+16(FP), CX
	SHRQ $3, CX
	JZ   gdone

gloop:
	VMOVUPS     (SI), Y0
	VMULPS      Y0, Y0, Y1
	VMULPS      gelu_k1<>(SB), Y1, Y1
	VADDPS      gelu_k0<>(SB), Y1, Y1
	VMULPS      Y0, Y1, Y1 // −2u
	EXP8(Y1, Y2, Y4, Y3)
	VADDPS      expc_one<>(SB), Y3, Y3
	VDIVPS      Y3, Y0, Y3 // x / (1 + e^{−2u})
	VMOVUPS     Y3, (DI)
	ADDQ        $32, SI
	ADDQ        $32, DI
	DECQ        CX
	JNZ         gloop

gdone:
	VZEROUPPER
	RET

// func geluBackAVX2(dx, dy, x *float32, n int)
// dx += dy·(s + 2c·x·s·(1−s)·(1 + 3·0.044715·x²)), s = σ(2u), n a multiple of 8.
TEXT ·geluBackAVX2(SB), NOSPLIT, $0-32
	MOVQ dx+0(FP), DI
	MOVQ dy+8(FP), DX
	MOVQ x+16(FP), SI
	MOVQ n+24(FP), CX
	SHRQ $3, CX
	JZ   bdone

bloop:
	VMOVUPS     (SI), Y0
	VMULPS      Y0, Y0, Y5 // x²
	VMULPS      gelu_k1<>(SB), Y5, Y1
	VADDPS      gelu_k0<>(SB), Y1, Y1
	VMULPS      Y0, Y1, Y1 // −2u
	EXP8(Y1, Y2, Y4, Y3)
	VADDPS      expc_one<>(SB), Y3, Y3
	VMOVUPS     expc_one<>(SB), Y6
	VDIVPS      Y3, Y6, Y6 // s
	VMOVUPS     expc_one<>(SB), Y8
	VSUBPS      Y6, Y8, Y8 // 1 − s
	VMULPS      Y6, Y8, Y8
	VMULPS      Y0, Y8, Y8
	VMULPS      gelu_q<>(SB), Y5, Y7
	VADDPS      expc_one<>(SB), Y7, Y7 // 1 + 3·0.044715·x²
	VMULPS      Y7, Y8, Y8
	VMULPS      gelu_2c<>(SB), Y8, Y8
	VADDPS      Y6, Y8, Y8 // d
	VMOVUPS     (DX), Y9
	VMOVUPS     (DI), Y10
	VFMADD231PS Y9, Y8, Y10
	VMOVUPS     Y10, (DI)
	ADDQ        $32, SI
	ADDQ        $32, DX
	ADDQ        $32, DI
	DECQ        CX
	JNZ         bloop

bdone:
	VZEROUPPER
	RET
