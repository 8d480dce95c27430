//! What a row's user program does besides loads and stores: sleep until
//! another role tells it something happened, and wake such a sleeper (a
//! futex wait and wake, done with the interrupt hardware); where its pages
//! go; and how a row's `setup` faults them in and checks their PTEs.
//!
//! A sleeping role halts its CPU instead of spinning: under QEMU TCG a
//! spinning vCPU keeps a host core from the roles that do the work, and
//! with more roles than host cores an iteration then costs host time
//! slices instead of microseconds.
//!
//! Invariant: the condition is checked with interrupts off and the halt
//! re-enables them atomically ([`Arch::wait_for_interrupt`]), so a wake
//! sent after the check ends the halt instead of being lost.

use super::point;
use crate::mm::arch::{FaultInfo, Mmu};
use crate::mm::mm::Mm;
use crate::mm::page::{self, pfn_to_page};
use crate::mm::{memory, pgtable, PAGE_SHIFT, PAGE_SIZE};
use crate::Arch;
use alloc::{format, string::String, vec::Vec};

/// Where a row maps its user pages (two of them) when its forced schedule
/// needs a CPU's TLB entry for one of them to survive while that CPU waits
/// (a store through a stale translation after the PTE clear).
///
/// QEMU's TCG TLB is direct-mapped: per vCPU and MMU mode, 64 to 256
/// entries or more, indexed by the low bits of the virtual page number,
/// with an 8-entry victim TLB behind it. A kernel page the waiting CPU
/// touches on every turn of its wait (the schedule's cursor), on every tick
/// (the grace-period state, the per-CPU data, the local APIC page, whose
/// page number ends in zero bits like `TASK_BASE`'s), on every iteration
/// (the runner's context and shared words, [`super::scenario::runner_addrs`],
/// which moved with the heap and made `nested-flush` miss) or in the PTL code
/// evicts a user entry in the same slot: the store then faults instead of
/// going through the stale entry, and the forced x86-64 cells of
/// `zap-rmap-vs-mkclean` and `nested-flush` miss their hits (seen at
/// `TASK_BASE`, and at `TASK_BASE + 45` pages after a change of kernel
/// layout put the cursor's page in slot 45). So the pages go to the first
/// slot from `TASK_BASE + 45` pages on whose two pages share no slot, for
/// a 64- or a 256-entry TLB, with slot 0 or any of those kernel pages.
/// Kernel code pages are not avoided: the wait's own loop and the tick
/// handler are a few pages in a large image, and
/// `tests/tests/forced_repeat.rs` shows a layout where they collide.
pub fn stale_tlb_base<A: Mmu>() -> u64 {
    let mut hot: Vec<u64> = point::wait_state_addrs().to_vec();
    hot.extend(crate::rcu::tick_state_addrs());
    hot.push(crate::mm::memory::ptlocks_addr());
    hot.extend(super::scenario::runner_addrs());
    hot.extend((0..crate::smp::nr_cpus()).map(|c| crate::percpu::per_cpu(c) as *const _ as u64));
    let hot_pages: Vec<u64> = hot.iter().map(|a| a >> PAGE_SHIFT).collect();
    let base_pn = A::TASK_BASE >> PAGE_SHIFT;
    let free = |pn: u64| {
        [64u64, 256]
            .iter()
            .all(|&n| !pn.is_multiple_of(n) && hot_pages.iter().all(|&h| h % n != pn % n))
    };
    let k = (45..45 + 256)
        .find(|&k| free(base_pn + k) && free(base_pn + k + 1))
        .unwrap_or(45);
    A::TASK_BASE + k * PAGE_SIZE
}

/// Halts the calling CPU until `cond` holds; any interrupt (a [`wake`],
/// a flush IPI, the tick) makes it check again. Call with interrupts on.
pub fn sleep_until<A: Arch>(cond: impl Fn() -> bool + Sync) {
    if point::exploring() {
        // Explore mode: a blocked role, granted a step only once `cond`
        // holds.
        return point::wait_until::<A>(cond);
    }
    // A forced schedule (an explore replay) can hold it here.
    point::race_point::<A>(&point::points::ROLE_WAIT, 0);
    loop {
        A::local_irq_disable();
        if cond() {
            A::local_irq_enable();
            return;
        }
        crate::rcu::idle_halt::<A>();
    }
}

/// Wakes the CPU of `role` if it sleeps in [`sleep_until`] (a bare IPI:
/// nothing queued).
pub fn wake<A: Arch>(role: usize) {
    if let Some(cpu) = point::cpu_of(role) {
        A::send_ipi(cpu);
    }
}

/// Faults the page at `addr` of `mm` in (for writing if `write`) from the
/// controller, which runs no mm: the fault is resolved in software, as
/// `populate` would, and one already resolved is spurious. Then reads the
/// PTE under its PTL and checks that it is present and writable (`write`)
/// or read-only. Returns the page's pfn. No CPU may run `mm` yet.
pub fn fault_in<A: Mmu>(mm: &Mm<A>, addr: u64, write: bool) -> Result<u64, String> {
    let info = FaultInfo {
        addr,
        write,
        protection: false,
        code: 0,
    };
    memory::do_user_fault(mm, info).map_err(|e| format!("fault at {addr:#x}: {e}"))?;
    present_pte(mm, addr, write)
}

/// Reads the PTE of `addr` in `mm` under its PTL and checks that it is
/// present and writable (`writable`) or read-only; returns its pfn. No CPU
/// may run `mm` yet.
pub fn present_pte<A: Mmu>(mm: &Mm<A>, addr: u64, writable: bool) -> Result<u64, String> {
    let ptep = pgtable::follow_pte(mm, addr).ok_or_else(|| String::from("no PTE table"))?;
    let pte = {
        let _ptl = memory::pte_lockptr(ptep).lock();
        // SAFETY: a live PTE of this mm (no CPU runs it yet); PTL held.
        unsafe { pgtable::read_entry(ptep) }
    };
    if !A::pte_present(pte) || A::pte_write(pte) != writable {
        let want = if writable { "writable" } else { "read-only" };
        return Err(format!("PTE {pte:#x} is not present and {want}"));
    }
    Ok(A::pte_pfn(pte))
}

/// Checks that the page at `pfn` is an exclusive anonymous page: one
/// reference and one mapping, as `do_wp_page`'s reuse and reclaim want.
pub fn exclusive_anon(pfn: u64) -> Result<(), String> {
    let p = pfn_to_page(pfn);
    let (refs, maps) = (page::page_ref_count(p), page::page_mapcount(p));
    if !page::PageAnon(p) || refs != 1 || maps != 1 {
        return Err(format!(
            "page {pfn:#x}: anon={} refcount={refs} mapcount={maps}, want an exclusive anonymous page",
            page::PageAnon(p)
        ));
    }
    Ok(())
}
