# Interrupt and exception entry of the x86-64 quiesce kernel (Linux: entry_64.S,
# idtentry.h), for every one of the 256 IDT vectors.
#
# irq_entries holds one 16-byte stub per vector, so the stub of vector v is at
# irq_entries + 16 * v. A stub pushes a zero error code when the CPU pushes none
# (every vector but 8, 10-14, 17, 21, 29, 30), then the vector number, and jumps
# to common_interrupt. That saves the 15 general registers, so the stack holds a
# complete struct PtRegs (idt.rs) from r15 at the lowest address up to the
# hardware frame (rip, cs, rflags, rsp, ss), and calls the Rust dispatcher with a
# pointer to it. The CPU aligned the stack to 16 bytes before its 5-word frame;
# 1 + 1 + 15 more words keep the call 16-byte aligned as the ABI requires.
# Afterwards the registers, possibly changed by the handler, are restored and
# iretq returns.
#
# All gates are interrupt gates: the handler runs with IF=0. The kernel runs in
# ring 0 only, so there is no stack switch and no swapgs (GS base always points to
# the CPU's own data), except #DF, which the IDT sends to IST stack 1.
#
# Placeholders in braces are operands of the global_asm! that includes this file.

.pushsection .text.entry, "ax"
.code64
.balign 16
.globl irq_entries
irq_entries:
.set vector, 0
.rept 256
    .balign 16
    .if vector == 8 || (vector >= 10 && vector <= 14) || vector == 17 || vector == 21 || vector == 29 || vector == 30
    .else
    pushq $0
    .endif
    pushq $vector
    jmp common_interrupt
    .set vector, vector + 1
.endr
.globl irq_entries_end
irq_entries_end:

common_interrupt:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    cld
    movq %rsp, %rdi
    call {do_interrupt}
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp                      # vector and error code
    iretq
.popsection
