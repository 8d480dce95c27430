//! Host-side emulated architectures for unit tests of the generic memory
//! model: page tables live in the test's "physical" memory (a host buffer, see
//! `memmap::test_mem`), and a software MMU ([`Emul::probe_load`] /
//! [`Emul::probe_store`]) walks them as hardware would, raising faults into the
//! generic fault handler. Two geometries: 4 KiB PTE tables carved from order-4
//! blocks (as x86-64 here) and 2 KiB PTE tables, two per frame (as s390x).
//!
//! The format: four levels of 512-entry upper tables (the `p4d` folded
//! statically onto the `pgd`), an upper entry is `table | 1`, a PTE is
//! `frame | P(1) | W(2) | A(0x20) | D(0x40)`; 0 is empty.

use super::arch::{FaultInfo, Level, Mmu, PteProt};
use super::mm::Mm;
use super::{page, page_alloc, PAGE_SIZE};
use crate::{Arch, IrqFlags};
use core::sync::atomic::{AtomicU64, Ordering};

const P: u64 = 1;
const W: u64 = 2;
const A_BIT: u64 = 0x20;
const D: u64 = 0x40;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// TLB flushes requested, for tests.
pub static FLUSHES: AtomicU64 = AtomicU64::new(0);

fn entries(table: u64) -> *mut u64 {
    page::phys_to_virt(table).cast()
}

macro_rules! emul_arch {
    ($name:ident, $ptrs:expr) => {
        /// An emulated architecture (see the module docs).
        pub struct $name;

        // SAFETY: promise 1 of `Arch`: the kernel image is empty (0..0), so
        // a backtrace reads nothing.
        unsafe impl Arch for $name {
            const NAME: &'static str = "emul";
            const HAS_NMI: bool = false;
            fn console_write(bytes: &[u8]) {
                print!("{}", String::from_utf8_lossy(bytes));
            }
            fn smp_processor_id() -> usize {
                0
            }
            fn local_irq_enable() {}
            fn local_irq_disable() {}
            fn irqs_disabled() -> bool {
                false
            }
            fn local_irq_save() -> IrqFlags {
                IrqFlags(0)
            }
            fn local_irq_restore(_: IrqFlags) {}
            fn cpu_relax() {
                core::hint::spin_loop();
            }
            fn wait_for_interrupt() {}
            fn clock_ns() -> u64 {
                std::time::UNIX_EPOCH
                    .elapsed()
                    .map_or(0, |d| d.as_nanos() as u64)
            }
            fn send_ipi(cpu: usize) {
                panic!("emulated arch has one CPU; IPI to {cpu}");
            }
            fn send_nmi(cpu: usize) {
                panic!("emulated arch has no NMI; NMI to {cpu}");
            }
            fn ipi_pending(_: usize) -> Option<bool> {
                // One CPU, no IPIs.
                Some(false)
            }
            fn timer_start(_: u64) {}
            fn boot_secondary(_: usize) -> Result<(), &'static str> {
                Err("emulated arch has one CPU")
            }
            fn stop_other_cpus() {}
            fn exit(success: bool) -> ! {
                panic!("emulated machine exit (success={success})");
            }
            // No frame walks on the host: an empty image stops them at once.
            fn frame_pointer() -> usize {
                0
            }
            fn unwind_frame(
                _: usize,
                _: &mut dyn FnMut(usize) -> Option<usize>,
            ) -> Option<crate::backtrace::StackFrame> {
                None
            }
            fn kernel_image() -> core::ops::Range<usize> {
                0..0
            }
        }

        // SAFETY: the numbered promises of `Mmu`, for a software MMU:
        // 1, 2: the offset helpers index 512-entry upper tables and
        //    `$ptrs`-entry PTE tables at the addresses the entries hold, the
        //    same tables `translate` (the emulated walker) reads; an entry
        //    is `table | 1`, so `entry_table` gives `mk_table_entry`'s table
        //    back; `p4d` is folded statically onto the `pgd`;
        // 3. the empty entry is 0, which `translate` treats as not present;
        // 4. the sizes are those spans, one frame per upper table;
        // 5. "RAM" is the test's host buffer, addressed through
        //    `phys_to_virt` whatever is "loaded"; the task range starts above
        //    it; `switch_mm` has nothing to load: `translate` walks the
        //    generic current mm;
        // 6. `set_pte_at` stores over an empty entry, the clears are atomic
        //    exchanges and the write protection an atomic AND;
        // 7. CLEAR_FLUSHES_TLB is false;
        // 8. there is no TLB: `translate` walks the tables on every access,
        //    so the flushes (counted for the tests) have nothing to drop;
        // 9. `probe_load`/`probe_store` raise faults into the generic fault
        //    handler and return what it could not resolve as `Err`.
        unsafe impl Mmu for $name {
            type Context = AtomicU64;
            const PTRS_PER_PTE: usize = $ptrs;
            const PTE_TABLE_SIZE: usize = $ptrs * 8;
            const CRST_ORDER: u32 = 0;
            const PMD_SIZE: u64 = $ptrs * PAGE_SIZE;
            const PUD_SIZE: u64 = Self::PMD_SIZE * 512;
            const P4D_SIZE: u64 = Self::PUD_SIZE * 512;
            const PGDIR_SIZE: u64 = Self::P4D_SIZE;
            const HAS_HUGE_PMD: bool = false;
            const CLEAR_FLUSHES_TLB: bool = false;
            const HW_YOUNG_DIRTY: bool = false;
            const TASK_BASE: u64 = Self::PGDIR_SIZE;
            const TASK_SIZE_MAX: u64 = Self::PGDIR_SIZE * 256;

            fn init_new_context() -> Option<AtomicU64> {
                let pg = page_alloc::alloc_pages(0)?;
                let t = page::page_to_phys(pg);
                super::pgtable::pagetable_ctor(t, 0);
                // SAFETY: a fresh frame of ours.
                unsafe { core::ptr::write_bytes(entries(t), 0, 512) };
                Some(AtomicU64::new(t))
            }
            fn destroy_context(ctx: &AtomicU64) {
                let t = ctx.load(Ordering::Acquire);
                super::pgtable::pagetable_dtor(t, 0);
                page_alloc::__free_pages(page::phys_to_page(t), 0);
            }
            fn context_limit(_: &AtomicU64) -> u64 {
                Self::TASK_SIZE_MAX
            }
            fn arch_prepare_range(_: &Mm<Self>, end: u64) -> Result<(), &'static str> {
                if end <= Self::TASK_SIZE_MAX {
                    Ok(())
                } else {
                    Err("beyond TASK_SIZE_MAX")
                }
            }
            unsafe fn switch_mm(_: &Mm<Self>) {}
            fn switch_to_kernel_mm() {}
            fn empty_entry(_: Level) -> u64 {
                0
            }
            fn entry_none(_: Level, e: u64) -> bool {
                e == 0
            }
            fn entry_is_table(_: Level, e: u64) -> bool {
                e & P != 0
            }
            fn entry_table(_: Level, e: u64) -> u64 {
                // Tables are at least 2 KiB aligned.
                e & 0x000f_ffff_ffff_f800
            }
            fn mk_table_entry(_: Level, table: u64) -> u64 {
                table | P
            }
            fn pgd_offset(ctx: &AtomicU64, addr: u64) -> *mut u64 {
                let i = (addr / Self::PGDIR_SIZE) as usize % 512;
                // SAFETY: the top table has 512 entries.
                unsafe { entries(ctx.load(Ordering::Acquire)).add(i) }
            }
            unsafe fn p4d_offset(pgdp: *mut u64, _: u64) -> *mut u64 {
                pgdp
            }
            unsafe fn pud_offset(p4dp: *mut u64, addr: u64) -> *mut u64 {
                // SAFETY: the caller passes a live, populated entry.
                unsafe { Self::pud_offset_lockless(p4dp, p4dp.read_volatile(), addr) }
            }
            unsafe fn pmd_offset(pudp: *mut u64, addr: u64) -> *mut u64 {
                // SAFETY: as above.
                unsafe { Self::pmd_offset_lockless(pudp, pudp.read_volatile(), addr) }
            }
            unsafe fn pte_offset(pmdp: *mut u64, addr: u64) -> *mut u64 {
                // SAFETY: the caller passes a populated PMD entry.
                let t = Self::entry_table(Level::Pmd, unsafe { pmdp.read_volatile() });
                let i = (addr / PAGE_SIZE) as usize % $ptrs;
                // SAFETY: a PTE table has PTRS_PER_PTE entries.
                unsafe { entries(t).add(i) }
            }
            unsafe fn p4d_offset_lockless(pgdp: *mut u64, _: u64, _: u64) -> *mut u64 {
                pgdp
            }
            unsafe fn pud_offset_lockless(_: *mut u64, p4d: u64, addr: u64) -> *mut u64 {
                let i = (addr / Self::PUD_SIZE) as usize % 512;
                // SAFETY: upper tables have 512 entries.
                unsafe { entries(p4d & ADDR_MASK).add(i) }
            }
            unsafe fn pmd_offset_lockless(_: *mut u64, pud: u64, addr: u64) -> *mut u64 {
                let i = (addr / Self::PMD_SIZE) as usize % 512;
                // SAFETY: upper tables have 512 entries.
                unsafe { entries(pud & ADDR_MASK).add(i) }
            }
            fn pfn_pte(pfn: u64, prot: PteProt) -> u64 {
                (pfn << 12) | P | A_BIT | if prot.write { W | D } else { 0 }
            }
            fn pte_pfn(pte: u64) -> u64 {
                (pte & ADDR_MASK) >> 12
            }
            fn pte_none(pte: u64) -> bool {
                pte == 0
            }
            fn pte_present(pte: u64) -> bool {
                pte & P != 0
            }
            fn pte_write(pte: u64) -> bool {
                pte & W != 0
            }
            fn pte_dirty(pte: u64) -> bool {
                pte & D != 0
            }
            fn pte_young(pte: u64) -> bool {
                pte & A_BIT != 0
            }
            fn pte_mkold(pte: u64) -> u64 {
                pte & !A_BIT
            }
            fn pte_mkclean(pte: u64) -> u64 {
                pte & !D
            }
            fn pte_wrprotect(pte: u64) -> u64 {
                pte & !W
            }
            fn pte_mkwrite(pte: u64) -> u64 {
                pte | W
            }
            fn pte_mkdirty(pte: u64) -> u64 {
                pte | D
            }
            unsafe fn set_pte_at(_: &Mm<Self>, _: u64, ptep: *mut u64, pte: u64) {
                // The emulated arch's own store (what the arch owns), raw
                // like a backend's.
                // SAFETY: the caller passes a live entry and holds the PTL.
                unsafe { ptep.write_volatile(pte) }
            }
            unsafe fn ptep_get_and_clear(_: &Mm<Self>, _: u64, ptep: *mut u64) -> u64 {
                // SAFETY: a live, aligned entry (caller's contract).
                unsafe { AtomicU64::from_ptr(ptep) }.swap(0, Ordering::AcqRel)
            }
            unsafe fn ptep_clear_unflushed(mm: &Mm<Self>, addr: u64, ptep: *mut u64) -> u64 {
                // SAFETY: forwarded: the clear flushes nothing here either.
                unsafe { Self::ptep_get_and_clear(mm, addr, ptep) }
            }
            unsafe fn pmdp_get_and_clear(_: &Mm<Self>, _: u64, pmdp: *mut u64) -> u64 {
                // SAFETY: a live, aligned entry (caller's contract).
                unsafe { AtomicU64::from_ptr(pmdp) }.swap(0, Ordering::AcqRel)
            }
            unsafe fn ptep_set_wrprotect(_: &Mm<Self>, _: u64, ptep: *mut u64) {
                // SAFETY: as above.
                unsafe { AtomicU64::from_ptr(ptep) }.fetch_and(!W, Ordering::AcqRel);
            }
            fn flush_tlb_page(_: &Mm<Self>, _: u64) {
                FLUSHES.fetch_add(1, Ordering::Relaxed);
            }
            fn flush_tlb_range(_: &Mm<Self>, _: u64, _: u64) {
                FLUSHES.fetch_add(1, Ordering::Relaxed);
            }
            fn local_flush_tlb_page(_: u64) {}
            fn flush_tlb_mm(_: &Mm<Self>) {
                FLUSHES.fetch_add(1, Ordering::Relaxed);
            }
            // One CPU: there is nobody to reach; the knob keeps a value.
            const FLUSH_STRATEGIES: &'static [crate::mm::tlbflush::FlushStrategy] =
                &[crate::mm::tlbflush::FlushStrategy::Ipi];
            fn probe_load(addr: u64) -> Result<u64, FaultInfo> {
                let pa = translate::<Self>(addr, false)?;
                // SAFETY: `translate` found a present mapping of a live frame.
                Ok(unsafe { page::phys_to_virt(pa).cast::<u64>().read_volatile() })
            }
            fn probe_store(addr: u64, val: u64) -> Result<(), FaultInfo> {
                let pa = translate::<Self>(addr, true)?;
                // SAFETY: as above, and the PTE allows stores.
                unsafe { page::phys_to_virt(pa).cast::<u64>().write_volatile(val) };
                Ok(())
            }
        }
    };
}

emul_arch!(Emul4k, 512);
emul_arch!(Emul2k, 256);

/// Host tests of generic cases on both emulated arches: for each
/// `case<A: Mmu>()`, a module `case` with the tests `emul4k` and `emul2k`.
macro_rules! emul_tests {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[test]
            fn emul4k() {
                super::$case::<$crate::mm::emul::Emul4k>();
            }

            #[test]
            fn emul2k() {
                super::$case::<$crate::mm::emul::Emul2k>();
            }
        }
    )*};
}
pub(crate) use emul_tests;

/// The software MMU: walks the current mm's tables; on a missing or
/// write-protected translation raises a fault into the generic handler and
/// retries, as the hardware would re-execute the instruction.
fn translate<A: Mmu>(addr: u64, write: bool) -> Result<u64, FaultInfo> {
    for _ in 0..3 {
        let mm = super::mm::current_mm::<A>().expect("the software MMU needs a current mm");
        let pte = super::pgtable::follow_pte(mm, addr)
            // SAFETY: a live entry of the current mm.
            .map(|p| unsafe { super::pgtable::read_entry(p) })
            .unwrap_or(0);
        let protection = A::pte_present(pte);
        if protection && (!write || A::pte_write(pte)) {
            return Ok((A::pte_pfn(pte) << 12) | (addr & (PAGE_SIZE - 1)));
        }
        let info = FaultInfo {
            addr,
            write,
            protection,
            code: 14,
        };
        if super::fault::handle_mm_fault::<A>(info).is_err() {
            return Err(info);
        }
    }
    panic!("software MMU: fault at {addr:#x} resolved but still not mapped");
}

#[cfg(test)]
mod tests;
