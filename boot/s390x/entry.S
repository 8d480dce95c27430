/*
 * quiesce s390x entry code: the ELF entry of CPU 0, the restart entry of the
 * secondary CPUs and the first-level interruption handlers.
 *
 * Included by arch/s390x/src/entry.rs with global_asm!, which defines the
 * __LC_* lowcore offsets, the PSW masks and the stack sizes used here from the
 * Rust definitions (one source of truth).
 *
 * Conventions:
 * - Lowcore fields are addressed with base register 0 ("no base"): a real
 *   address below 8 KiB, which prefixing turns into the calling CPU's lowcore.
 * - Every handler stores all 16 general registers into its own save area in
 *   the lowcore first, then switches to a per-CPU stack whose top the lowcore
 *   holds (async stack for external interruptions, panic stack for the rest),
 *   and calls Rust with a 160-byte register save area below the stack top.
 * - The first frame on every stack gets a zero back chain (0(%r15)): the
 *   kernel is built with the backchain feature, and a backtrace stops there
 *   (arch/s390x/src/unwind.rs). ENTER_STACK sets up that frame.
 * - Only the external-interruption handler returns: it restores the registers
 *   and loads the old PSW with the wait bit cleared, so an interruption that
 *   ends an enabled wait resumes after the wait.
 */

/*
 * ENTER_STACK lc_stack: %r15 = the stack top held by the lowcore field
 * \lc_stack, less the caller's register save area, and the first frame's back
 * chain cleared.
 */
	.macro	ENTER_STACK lc_stack
	lg	%r15,\lc_stack
	aghi	%r15,-__STACK_FRAME_OVERHEAD
	xc	0(8,%r15),0(%r15)		/* a zero back chain ends the chain */
	.endm

	.section .text.entry,"ax",@progbits
	.globl	_start
	.type	_start,@function
_start:
	/* New PSWs first: from here on every interruption lands in a handler. */
	larl	%r1,s390x_new_psws
	lghi	%r2,0
	mvc	__LC_RESTART_PSW(96,%r2),0(%r1)
	/* CPU 0's lowcore is absolute 0 (prefix 0): logical CPU 0, boot stacks. */
	xc	__LC_CPU_NR(8,%r2),__LC_CPU_NR(%r2)
	xc	__LC_PGM_DEPTH(8,%r2),__LC_PGM_DEPTH(%r2)
	larl	%r1,boot_panic_stack_top
	stg	%r1,__LC_PANIC_STACK
	larl	%r1,boot_async_stack_top
	stg	%r1,__LC_ASYNC_STACK
	larl	%r1,boot_stack_top
	stg	%r1,__LC_KERNEL_STACK
	ENTER_STACK __LC_KERNEL_STACK
	lghi	%r11,0
	/* Continue with machine checks enabled (the M bit is only set by a PSW load). */
	larl	%r1,boot_psw
	lpswe	0(%r1)
.Lboot_continue:
	brasl	%r14,s390x_boot_main
	j	.Lboot_continue			/* s390x_boot_main does not return */

/* Restart entry of a secondary CPU: its lowcore is already filled in. */
	.globl	s390x_secondary_entry
	.type	s390x_secondary_entry,@function
s390x_secondary_entry:
	ENTER_STACK __LC_KERNEL_STACK
	lghi	%r11,0
	lg	%r2,__LC_CPU_NR
	brasl	%r14,s390x_secondary_main
	j	s390x_secondary_entry		/* s390x_secondary_main does not return */

/* External interruption: IPIs (external call, emergency signal), ticks. */
	.type	ext_int_handler,@function
ext_int_handler:
	stmg	%r0,%r15,__LC_SAVE_AREA_EXT
	ENTER_STACK __LC_ASYNC_STACK
	brasl	%r14,s390x_ext_handler
	ni	__LC_EXT_OLD_PSW_BYTE1,__PSW_BYTE1_NOT_WAIT
	lmg	%r0,%r15,__LC_SAVE_AREA_EXT
	lpswe	__LC_EXT_OLD_PSW

/*
 * Program check. The registers and the interruption's lowcore fields are
 * copied into a frame (struct PgmFrame) first: the Rust handler may enable
 * interruptions while it resolves a page fault, and a program check in an
 * interruption handler then nests. The outermost program check runs on the
 * panic stack, nested ones below the interrupted stack pointer. Depth
 * __PGM_MAX_DEPTH means the handler itself keeps faulting: this CPU stops in a
 * disabled wait without touching memory.
 *
 * s390x_pgm_handler returns when the fault is resolved (or a probe fixup was
 * applied): the registers and the PSW are reloaded from the frame, through
 * __LC_RETURN_PSW, with every interruption masked. Otherwise it panics.
 */
	.type	pgm_check_handler,@function
pgm_check_handler:
	stmg	%r0,%r15,__LC_SAVE_AREA_PGM
	lg	%r1,__LC_PGM_DEPTH
	aghi	%r1,1
	stg	%r1,__LC_PGM_DEPTH
	cghi	%r1,__PGM_MAX_DEPTH
	jhe	.Lpgm_give_up
	cghi	%r1,1
	jne	.Lpgm_nested
	lg	%r15,__LC_PANIC_STACK
.Lpgm_nested:
	aghi	%r15,-(__STACK_FRAME_OVERHEAD + __PGM_FRAME_SIZE)
	xc	0(8,%r15),0(%r15)		/* a zero back chain ends the chain */
	mvc	__STACK_FRAME_OVERHEAD + __PGM_FRAME_GPRS(128,%r15),__LC_SAVE_AREA_PGM(%r0)
	mvc	__STACK_FRAME_OVERHEAD + __PGM_FRAME_PSW(16,%r15),__LC_PGM_OLD_PSW(%r0)
	mvc	__STACK_FRAME_OVERHEAD + __PGM_FRAME_ILC(4,%r15),__LC_PGM_ILC(%r0)
	mvc	__STACK_FRAME_OVERHEAD + __PGM_FRAME_TEID(8,%r15),__LC_TRANS_EXC_CODE(%r0)
	mvc	__STACK_FRAME_OVERHEAD + __PGM_FRAME_BEA(8,%r15),__LC_BREAKING_EVENT_ADDR(%r0)
	stg	%r1,__STACK_FRAME_OVERHEAD + __PGM_FRAME_DEPTH(%r15)
	lghi	%r11,0
	la	%r2,__STACK_FRAME_OVERHEAD(%r15)
	brasl	%r14,s390x_pgm_handler
	lg	%r1,__LC_PGM_DEPTH
	aghi	%r1,-1
	stg	%r1,__LC_PGM_DEPTH
	mvc	__LC_RETURN_PSW(16,%r0),__STACK_FRAME_OVERHEAD + __PGM_FRAME_PSW(%r15)
	lmg	%r0,%r15,__STACK_FRAME_OVERHEAD + __PGM_FRAME_GPRS(%r15)
	lpswe	__LC_RETURN_PSW
.Lpgm_give_up:
	larl	%r1,pgm_give_up_psw
	lpswe	0(%r1)

/* Machine check: report and panic. */
	.type	mcck_int_handler,@function
mcck_int_handler:
	stmg	%r0,%r15,__LC_SAVE_AREA_MCCK
	ENTER_STACK __LC_PANIC_STACK
	lghi	%r11,0
	brasl	%r14,s390x_mcck_handler
	j	.Lpgm_give_up

/* Interruptions the kernel never asks for: report and panic. */
	.type	svc_int_handler,@function
svc_int_handler:
	stmg	%r0,%r15,__LC_SAVE_AREA_MISC
	lghi	%r2,__INT_KIND_SVC
	j	.Lunexpected
	.type	io_int_handler,@function
io_int_handler:
	stmg	%r0,%r15,__LC_SAVE_AREA_MISC
	lghi	%r2,__INT_KIND_IO
	j	.Lunexpected
	.type	restart_int_handler,@function
restart_int_handler:
	stmg	%r0,%r15,__LC_SAVE_AREA_MISC
	lghi	%r2,__INT_KIND_RESTART
.Lunexpected:
	ENTER_STACK __LC_PANIC_STACK
	lghi	%r11,0
	brasl	%r14,s390x_unexpected_handler
	j	.Lpgm_give_up

	.section .rodata.s390x_psws,"a",@progbits
	.balign	8
/* The six new PSWs in lowcore order: restart, external, SVC, program, machine check, I/O. */
	.globl	s390x_new_psws
s390x_new_psws:
	.quad	__PSW_HANDLER, restart_int_handler
	.quad	__PSW_HANDLER, ext_int_handler
	.quad	__PSW_HANDLER, svc_int_handler
	.quad	__PSW_HANDLER, pgm_check_handler
	.quad	__PSW_HANDLER, mcck_int_handler
	.quad	__PSW_HANDLER, io_int_handler
boot_psw:
	.quad	__PSW_KERNEL, .Lboot_continue
pgm_give_up_psw:
	.quad	__PSW_DISABLED_WAIT, __WAIT_ADDR_PGM_LOOP

	.section .bss.s390x_boot_stacks,"aw",@nobits
	.balign	4096
boot_stack:
	.skip	__KERNEL_STACK_SIZE
boot_stack_top:
boot_async_stack:
	.skip	__ASYNC_STACK_SIZE
boot_async_stack_top:
boot_panic_stack:
	.skip	__PANIC_STACK_SIZE
boot_panic_stack_top:

	.text
