//! Links the kernel with `boot/s390x/linker.ld` and rebuilds when it or
//! `boot/s390x/entry.S` (included by `global_asm!`) changes.

#[path = "../../boot/build_support.rs"]
mod build_support;

fn main() {
    build_support::link_with_boot_script("s390x", "linker.ld", &["entry.S", "floor.S"]);
}
