# PVH entry of the x86-64 quiesce kernel, and the common path of every CPU from
# 32-bit protected mode into 64-bit long mode.
#
# The boot CPU arrives at pvh_start_32 from QEMU's PVH loader: 32-bit protected
# mode with flat segments, paging off, interrupts off, %ebx = physical address of
# hvm_start_info. Secondary CPUs arrive at secondary_startup_32 from the real-mode
# trampoline (trampoline.S), with the GDT below already loaded.
#
# Both then enable PAE, load CR3 with the identity map built here by the boot CPU,
# set EFER.LME, turn on paging and jump to 64-bit code. %edi tells them apart:
# 0 on the boot CPU, 1 on a secondary CPU. The boot CPU continues on boot_stack
# into the Rust entry with the hvm_start_info address; a secondary CPU takes the
# stack and CPU number the boot CPU left in smpboot_stack / smpboot_cpu.
#
# Page tables: boot_pml4[0] -> boot_pdpt[0..4] -> boot_pd (4 pages, 2048 entries
# of 2 MiB each) identity-map 0..4 GiB, writable, supervisor. The 32 MiB below
# 4 GiB (IOAPIC, HPET, LAPIC at 0xfee00000, flash) are mapped uncached (PCD|PWT).
# The tables live in .bss, which the PVH loader zero-fills. So do the boot
# CPU's stack and its double-fault (IST 1) stack.
#
# Placeholders in braces are operands of the global_asm! that includes this file.

.set X86_CR0_PE, 0x00000001
.set X86_CR0_WP, 0x00010000
.set X86_CR0_PG, 0x80000000
.set X86_CR4_PAE, 0x00000020
.set MSR_EFER, 0xc0000080
.set EFER_LME, 0x00000100

.set PTE_PRESENT_RW, 0x003
.set PTE_LARGE, 0x080
.set PTE_PCD_PWT, 0x018
.set UNCACHED_FIRST_PD, 2032        # 0xfe000000 >> 21

# QEMU's PVH loader enters here (pvh_note.S).
PVH_ENTRY_NOTE pvh_start_32

.pushsection .head.text, "ax"
.code32
.globl pvh_start_32
pvh_start_32:
    cli
    cld
    movl %ebx, %esi                     # hvm_start_info, kept for the Rust entry
    lgdt boot_gdt_desc
    movl ${data}, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    ljmp ${code32}, $1f
1:
    # Identity map of 0..4 GiB with 2 MiB pages.
    movl $boot_pd, %edi
    xorl %ecx, %ecx
2:  movl %ecx, %eax
    shll $21, %eax
    orl $(PTE_PRESENT_RW | PTE_LARGE), %eax
    cmpl $UNCACHED_FIRST_PD, %ecx
    jb 3f
    orl $PTE_PCD_PWT, %eax
3:  movl %eax, (%edi,%ecx,8)
    movl $0, 4(%edi,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb 2b

    movl $(boot_pd + PTE_PRESENT_RW), boot_pdpt
    movl $(boot_pd + 0x1000 + PTE_PRESENT_RW), boot_pdpt + 8
    movl $(boot_pd + 0x2000 + PTE_PRESENT_RW), boot_pdpt + 16
    movl $(boot_pd + 0x3000 + PTE_PRESENT_RW), boot_pdpt + 24
    movl $(boot_pdpt + PTE_PRESENT_RW), boot_pml4

    xorl %edi, %edi                     # the boot CPU
    jmp startup_paging

# Secondary CPUs, from the trampoline: protected mode, boot GDT loaded.
.globl secondary_startup_32
secondary_startup_32:
    movl ${data}, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl $1, %edi                       # a secondary CPU

startup_paging:
    movl %cr4, %eax
    orl $X86_CR4_PAE, %eax
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $MSR_EFER, %ecx
    rdmsr
    orl $EFER_LME, %eax
    wrmsr
    movl %cr0, %eax
    orl $(X86_CR0_PG | X86_CR0_WP | X86_CR0_PE), %eax
    movl %eax, %cr0
    ljmp ${code64}, $startup_64

.code64
startup_64:
    movl ${data}, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %eax, %eax
    movl %eax, %fs
    movl %eax, %gs
    xorl %ebp, %ebp                     # ends the frame-pointer chain
    testl %edi, %edi
    jnz 4f
    movq $boot_stack_top, %rsp
    movl %esi, %edi                     # hvm_start_info (zero-extended)
    call {start_kernel}
    ud2
4:
    movq {smpboot_stack}(%rip), %rsp
    movq {smpboot_cpu}(%rip), %rdi
    call {start_secondary}
    ud2
.popsection

# GDT pseudo-descriptor; lgdt reads 6 bytes in 32-bit mode, 10 in 64-bit mode.
.pushsection .rodata.boot_gdt_desc, "a"
    .balign 8
    .word 0
.globl boot_gdt_desc
boot_gdt_desc:
    .word {gdt_limit}
    .quad {gdt}
.popsection

.pushsection .bss.boot, "aw", @nobits
    .balign 4096
.globl boot_pml4                        # the kernel's PML4 (mmu.rs: kernel_pgd)
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4 * 4096
    .balign 16
boot_stack:
    .skip {boot_stack_size}
.globl boot_stack_top
boot_stack_top:
    .balign 16
boot_df_stack:
    .skip {df_stack_size}
.globl boot_df_stack_top
boot_df_stack_top:
.popsection
.code64
