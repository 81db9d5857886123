//go:build amd64

#include "textflag.h"

// func cbcDecryptAsm(nr int, dk, iv, dst, src *byte, groups int)
TEXT ·cbcDecryptAsm(SB), NOSPLIT, $0-48
	MOVQ nr+0(FP), R11
	MOVQ dk+8(FP), AX
	MOVQ iv+16(FP), BX
	MOVQ dst+24(FP), DI
	MOVQ src+32(FP), SI
	MOVQ groups+40(FP), CX
	MOVOU (BX), X9 // previous ciphertext block, first the IV
	TESTQ CX, CX
	JZ cbc_done

cbc_group:
	MOVOU 0(SI), X0
	MOVOU 16(SI), X1
	MOVOU 32(SI), X2
	MOVOU 48(SI), X3
	MOVOU 64(SI), X4
	MOVOU 80(SI), X5
	MOVOU 96(SI), X6
	MOVOU 112(SI), X7
	MOVOU (AX), X8
	PXOR X8, X0
	PXOR X8, X1
	PXOR X8, X2
	PXOR X8, X3
	PXOR X8, X4
	PXOR X8, X5
	PXOR X8, X6
	PXOR X8, X7
	LEAQ 16(AX), R12
	MOVQ R11, R13
	DECQ R13

cbc_round:
	MOVOU (R12), X8
	AESDEC X8, X0
	AESDEC X8, X1
	AESDEC X8, X2
	AESDEC X8, X3
	AESDEC X8, X4
	AESDEC X8, X5
	AESDEC X8, X6
	AESDEC X8, X7
	ADDQ $16, R12
	DECQ R13
	JNZ cbc_round
	MOVOU (R12), X8
	AESDECLAST X8, X0
	AESDECLAST X8, X1
	AESDECLAST X8, X2
	AESDECLAST X8, X3
	AESDECLAST X8, X4
	AESDECLAST X8, X5
	AESDECLAST X8, X6
	AESDECLAST X8, X7

	// Plaintext = decryption XOR previous ciphertext; load every
	// ciphertext block before storing so that dst may equal src.
	PXOR X9, X0
	MOVOU 0(SI), X10
	PXOR X10, X1
	MOVOU 16(SI), X10
	PXOR X10, X2
	MOVOU 32(SI), X10
	PXOR X10, X3
	MOVOU 48(SI), X10
	PXOR X10, X4
	MOVOU 64(SI), X10
	PXOR X10, X5
	MOVOU 80(SI), X10
	PXOR X10, X6
	MOVOU 96(SI), X10
	PXOR X10, X7
	MOVOU 112(SI), X9
	MOVOU X0, 0(DI)
	MOVOU X1, 16(DI)
	MOVOU X2, 32(DI)
	MOVOU X3, 48(DI)
	MOVOU X4, 64(DI)
	MOVOU X5, 80(DI)
	MOVOU X6, 96(DI)
	MOVOU X7, 112(DI)
	ADDQ $128, SI
	ADDQ $128, DI
	DECQ CX
	JNZ cbc_group

cbc_done:
	RET
