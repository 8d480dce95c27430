//! Links the kernel with `boot/s390x/linker.ld`.

use std::path::PathBuf;

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let boot = manifest
        .join("../../boot/s390x")
        .canonicalize()
        .expect("boot/s390x exists");
    let script = boot.join("linker.ld");
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed={}", boot.join("entry.S").display());
    println!("cargo:rerun-if-changed=build.rs");
}
