//! Links the kernel with boot/x86_64/kernel.ld and rebuilds when the assembly
//! sources included by `global_asm!` change.

use std::path::PathBuf;

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let boot = manifest
        .join("../../boot/x86_64")
        .canonicalize()
        .expect("boot/x86_64 exists");
    let script = boot.join("kernel.ld");
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    for file in ["kernel.ld", "head.S", "trampoline.S", "entry_64.S"] {
        println!("cargo:rerun-if-changed={}", boot.join(file).display());
    }
    println!("cargo:rerun-if-changed=build.rs");
}
