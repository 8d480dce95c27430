/*
 * The QEMU floor image of `cargo xtask bench`: the least a guest can do on
 * this machine. CPU 0 writes one byte to the SCLP console (WRITE EVENT DATA,
 * as arch/s390x/src/sclp.rs does) and ends in the disabled wait at 0xfff,
 * QEMU's clean shutdown. Its time to that byte and to the exit, with the
 * kernel's own QEMU options, is what QEMU costs before any kernel code runs.
 *
 * Linked with linker.ld, like the kernel.
 */
	.section .text.entry,"ax",@progbits
	.globl	_start
	.type	_start,@function
_start:
	llilf	%r2,0x00760005		/* SCLP_CMDW_WRITE_EVENT_DATA */
	larl	%r3,floor_sccb
0:	.insn	rre,0xb2200000,%r2,%r3	/* SERVC */
	jo	1f			/* cc 3: no SCLP, exit all the same */
	jh	0b			/* cc 2: busy, retry */
1:	larl	%r1,floor_exit_psw
	lpswe	0(%r1)

	.section .rodata
	.balign	8
floor_exit_psw:
	.quad	0x0002000180000000	/* wait, 64-bit addressing, no interrupts */
	.quad	0xfff			/* WAIT_ADDR_SUCCESS */

	.section .data
	.balign	4096			/* an SCCB is page-aligned, below 2 GiB */
floor_sccb:
	.short	8 + 6 + 1		/* SCCB length: header, event header, text */
	.byte	0, 0, 0, 0		/* function code, control mask */
	.short	0			/* response code */
	.short	6 + 1			/* event length */
	.byte	0x1a			/* EVTYP_VT220_MSG */
	.byte	0			/* flags */
	.short	0
	.ascii	"Q"
	.balign	4096
