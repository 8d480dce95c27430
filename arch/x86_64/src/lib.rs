//! The hardware-independent part of the quiesce x86-64 backend: the 4-level
//! page-table format ([`pgtable`]).
//!
//! Design: the backend package has two crates. This library holds what can be
//! exercised on the host: entry bits, index arithmetic, the Linux-named offset
//! helpers and the PTE predicates, all over plain `u64` entries and raw table
//! pointers, without inline assembly or privileged instructions. The binary
//! (`main.rs` and its modules) holds the hardware: CR3, INVLPG, the IDT, the
//! local APIC, and implements the kernel's `Mmu` contract by calling into this
//! library.
//!
//! Invariant: nothing here touches hardware state, so `cargo test -p
//! quiesce-arch-x86_64 --lib` builds tables in host memory and walks them with
//! the same code the kernel uses.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod pgtable;
