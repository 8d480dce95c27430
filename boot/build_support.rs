//! The part of the backends' build scripts (`arch/*/build.rs`, which include
//! this file as a module) that is the same for every architecture: link the
//! kernel with its linker script from `boot/<arch>` and rebuild when that
//! script or the assembly sources that `global_asm!` includes change.

use std::path::PathBuf;

/// Links the package's binaries with `boot/<arch>/<script>` and tells cargo to
/// rerun the build script when the script, one of `sources` (also in
/// `boot/<arch>`), the build script or this file changes.
pub fn link_with_boot_script(arch: &str, script: &str, sources: &[&str]) {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let boot = manifest
        .join("../../boot")
        .join(arch)
        .canonicalize()
        .unwrap_or_else(|e| panic!("boot/{arch} exists: {e}"));
    // Every binary of a backend (the kernel and its QEMU floor image) is
    // laid out by the same script.
    println!(
        "cargo:rustc-link-arg-bins=-T{}",
        boot.join(script).display()
    );
    for file in std::iter::once(&script).chain(sources) {
        println!("cargo:rerun-if-changed={}", boot.join(file).display());
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!(
        "cargo:rerun-if-changed={}",
        boot.join("../build_support.rs").display()
    );
}
