# Real-mode trampoline of the secondary CPUs (Linux: trampoline_64.S).
#
# smpboot copies the bytes between trampoline_start and trampoline_end to a page
# below 1 MiB (TRAMPOLINE_BASE) and sends a STARTUP IPI whose vector is that page
# number, so a CPU leaving wait-for-SIPI starts here in real mode with
# %cs = TRAMPOLINE_BASE >> 4, %ip = 0. The code is position-independent: it only
# addresses its own bytes through %ds = %cs, and then jumps to an absolute address
# in the kernel image.
#
# It loads the kernel's GDT (through a pseudo-descriptor with a 32-bit base, which
# it carries itself), sets CR0.PE and far-jumps through the 32-bit code selector
# straight to secondary_startup_32 in head.S, which does the rest of the way into
# long mode like the boot CPU.
#
# Placeholders in braces are operands of the global_asm! that includes this file.

.pushsection .rodata.trampoline, "a"
.code16
.balign 16
.globl trampoline_start
trampoline_start:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl (trampoline_gdt_desc - trampoline_start)
    movl %cr0, %eax
    orl $1, %eax                        # CR0.PE
    movl %eax, %cr0
    ljmpl ${code32}, $secondary_startup_32

    .balign 8
trampoline_gdt_desc:
    .word {gdt_limit}
    .long {gdt}
.globl trampoline_end
trampoline_end:
.popsection
.code64
