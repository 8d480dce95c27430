/*
 * The QEMU floor image of `cargo xtask bench`: the least a guest can do on
 * this machine. The PVH entry writes one byte to COM1 and leaves through
 * isa-debug-exit (QEMU exits 1). Its time to that byte and to the exit, with
 * the kernel's own QEMU options and firmware, is what QEMU costs before any
 * kernel code runs.
 *
 * Linked with kernel.ld, like the kernel: the entry is pvh_start_32.
 */
# QEMU's PVH loader enters here (pvh_note.S).
PVH_ENTRY_NOTE pvh_start_32

.pushsection .head.text, "ax"
.code32
.globl pvh_start_32
pvh_start_32:
    mov $0x3f8, %dx         # COM1 data register
    mov $'Q', %al
    out %al, %dx
    mov $0xf4, %dx          # isa-debug-exit: QEMU exits (0 << 1) | 1
    xor %eax, %eax
    out %al, %dx
1:  hlt
    jmp 1b
.popsection
