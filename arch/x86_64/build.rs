//! Links the kernel with boot/x86_64/kernel.ld and rebuilds when the assembly
//! sources included by `global_asm!` change.

#[path = "../../boot/build_support.rs"]
mod build_support;

fn main() {
    build_support::link_with_boot_script(
        "x86_64",
        "kernel.ld",
        &[
            "head.S",
            "trampoline.S",
            "entry_64.S",
            "floor.S",
            "pvh_note.S",
        ],
    );
}
