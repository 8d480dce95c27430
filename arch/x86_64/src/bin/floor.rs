//! The QEMU floor image (`boot/x86_64/floor.S`): one console byte, then exit.
//! `cargo xtask bench` times it next to the kernel's first KTAP line.

#![no_std]
#![no_main]

core::arch::global_asm!(
    include_str!("../../../../boot/x86_64/pvh_note.S"),
    include_str!("../../../../boot/x86_64/floor.S"),
    options(att_syntax)
);

/// Nothing in this image panics; the attribute is what a `no_std` binary needs.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
