/*
 * PVH_ENTRY_NOTE entry: the XEN_ELFNOTE_PHYS32_ENTRY note by which QEMU's
 * PVH loader finds the 32-bit entry of an ELF image (kept by KEEP in the
 * linker script). Included before head.S and floor.S.
 */
.macro PVH_ENTRY_NOTE entry
.pushsection .note.Xen, "a", @note
    .balign 4
    .long 4                 # name size ("Xen" and its NUL)
    .long 4                 # descriptor size
    .long 18                # XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .balign 4
    .long \entry
    .balign 4
.popsection
.endm
