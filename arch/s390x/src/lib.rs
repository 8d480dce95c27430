//! The hardware-independent part of the quiesce s390x backend: the DAT table
//! format ([`pgtable`]) and the storage-key format ([`storage_key`]).
//!
//! Design: the backend package has two crates. This library holds what can be
//! exercised on the host: the entry and ASCE bits, the table geometry, Linux's
//! `pXd_offset` helpers with dynamic folding, `crst_table_upgrade`, the kernel's
//! 1:1 map builder and a model of the hardware's DAT walk, all over plain `u64`
//! entries and raw table pointers, without inline assembly or privileged
//! instructions. The binary (`main.rs` and its modules) holds the hardware:
//! control registers, IPTE/IDTE/PTLB, the program-check path, and implements the
//! kernel's `Mmu` contract by calling into this library.
//!
//! Invariant: nothing here touches hardware state, so
//! `cargo test -p quiesce-arch-s390x --lib` builds tables in host memory and
//! walks them with the same code the kernel uses.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod pgtable;
pub mod storage_key;
