//! In-kernel tests of storage keys (KTAP suite `skey`): the per-frame
//! reference and change bits that s390x keeps outside the page tables, which
//! Linux up to 3.8 used as the dirty bit of a page
//! (`page_test_and_clear_dirty`), and which the catalogue's
//! `skey-dirty-vs-swapcache` row races against.
//!
//! Design. Generic over [`Mmu`]; every case is skipped on an architecture
//! without keys (`Mmu::STORAGE_KEYS` is `None`). Accesses are real: a task mm is
//! loaded, the frame is touched with plain loads and stores at
//! [`Mmu::TASK_BASE`], and the key is read back with ISKE. Between resetting a
//! key and reading it, nothing touches the frame but the access under test
//! (the kernel's 1:1 alias of the frame is not used).
//!
//! Every case checks that it leaked no frame, and prints the keys it saw as
//! `key_...=0x..` diagnostics, which the host asserts.

use super::{load, mapped_mm, no_leak, store};
use crate::cmdline::Cmdline;
use crate::ktap::Outcome;
use crate::mm::arch::{Mmu, StorageKeyOps, PAGE_CHANGED, PAGE_DEFAULT_KEY, PAGE_REFERENCED};
use crate::mm::memory;
use crate::mm::mm::{self as mmod, Mm};
use crate::mm::{page, page_alloc, pgtable, PAGE_SIZE};
use crate::selftest::TestFn;
use crate::{diag, smp};
use alloc::{boxed::Box, format, vec::Vec};
use core::sync::atomic::{AtomicU64, Ordering};

/// Key with R set and C clear, as after a load.
const KEY_R: u8 = PAGE_REFERENCED;
/// Key with R and C set, as after a store.
const KEY_RC: u8 = PAGE_REFERENCED | PAGE_CHANGED;

/// The suite's name.
pub(crate) const SUITE: &str = "skey";

/// The `skey` cases, in order.
pub(crate) fn cases<A: Mmu>() -> Vec<(&'static str, TestFn)> {
    crate::selftest::test_cases![
        A;
        key_set_at_alloc, change_bit_set_by_store, sske_and_rrbe_reset,
        page_test_and_clear_dirty, change_bit_on_another_cpu,
    ]
}

/// Runs a case's body with the arch's storage-key operations under
/// [`no_leak`], or skips the case on an architecture without keys. The case
/// passes if the body returns `Ok`.
fn keyed<A: Mmu>(body: impl FnOnce(StorageKeyOps) -> Result<(), Outcome>) -> Outcome {
    let Some(k) = A::STORAGE_KEYS else {
        return Outcome::Skip("no storage keys on this architecture");
    };
    no_leak(|| body(k).err().unwrap_or(Outcome::Pass))
}

/// [`keyed`] for a case whose claims need stores to set the change bit:
/// skipped, with the reason, where the boot's platform probe measured that
/// they do not ([`crate::platform`]).
fn keyed_c<A: Mmu>(body: impl FnOnce(StorageKeyOps) -> Result<(), Outcome>) -> Outcome {
    if let Some(skip) = crate::platform::skip_without(crate::platform::Property::SkeyChangeBit) {
        return skip;
    }
    keyed::<A>(body)
}

/// Fails with `why` unless `got == want`, naming both keys.
fn expect_key(what: &str, got: u8, want: u8) -> Result<(), Outcome> {
    if got == want {
        Ok(())
    } else {
        Err(Outcome::Fail(format!(
            "{what}: key {got:#04x}, expected {want:#04x}"
        )))
    }
}

/// A task mm with one populated, writable page at `TASK_BASE`, and its frame.
struct OnePage<A: Mmu> {
    mm: Box<Mm<A>>,
    pfn: u64,
}

impl<A: Mmu> OnePage<A> {
    fn new() -> Result<Self, Outcome> {
        let mm = mapped_mm::<A>(PAGE_SIZE, true)?;
        let pte = pgtable::follow_pte(&*mm, A::TASK_BASE).map(|ptep| {
            // SAFETY: a live entry of this mm, which nothing else changes.
            unsafe { pgtable::read_entry(ptep) }
        });
        match pte {
            Some(pte) if A::pte_present(pte) => Ok(Self {
                pfn: A::pte_pfn(pte),
                mm,
            }),
            _ => {
                memory::exit_mmap(*mm);
                Err(Outcome::Fail("the populated page is not mapped".into()))
            }
        }
    }

    /// A new one-page mm, loaded on this CPU while `f` runs with the frame
    /// and the page's address, torn down after.
    fn with_mm<R>(f: impl FnOnce(u64, u64) -> R) -> Result<R, Outcome> {
        let t = Self::new()?;
        // SAFETY: the mm lives until `exit`, which comes after `unuse_mm`.
        unsafe { mmod::use_mm(&*t.mm) };
        let r = f(t.pfn, A::TASK_BASE);
        mmod::unuse_mm::<A>();
        t.exit();
        Ok(r)
    }

    fn exit(self) {
        memory::exit_mmap(*self.mm);
    }
}

/// A frame's key right after allocation is the default one, whatever the
/// frame's previous user left in it, and before anything touches the frame.
fn key_set_at_alloc<A: Mmu>(_: &Cmdline) -> Outcome {
    keyed::<A>(|k| {
        // The two halves of an order-1 block: freeing the first leaves it at
        // the head of the order-0 list (its buddy is held), next in line.
        let Some(pair) = page_alloc::alloc_pages(1) else {
            return Err(Outcome::Fail("no order-1 block".into()));
        };
        page_alloc::split_page(pair, 1);
        let pfn = page::page_to_pfn(pair);
        let other = page::pfn_to_page(pfn + 1);
        // A key a previous user could leave: access key 1, R and C set.
        let dirty_key = 0x10 | KEY_RC;
        k.set_storage_key(pfn, dirty_key);
        let before_free = k.get_storage_key(pfn);
        page_alloc::free_page(pair);
        let page = page_alloc::alloc_pages(0);
        let got = page.map(|p| {
            (
                page::page_to_pfn(p),
                k.get_storage_key(page::page_to_pfn(p)),
            )
        });
        // Every frame of a larger block too.
        let block = page_alloc::alloc_pages(2);
        let block_keys = block.map(|b| {
            let head = page::page_to_pfn(b);
            [0, 1, 2, 3].map(|i| k.get_storage_key(head + i))
        });
        if let Some(p) = page {
            page_alloc::free_page(p);
        }
        if let Some(b) = block {
            page_alloc::__free_pages(b, 2);
        }
        page_alloc::free_page(other);
        let Some((got_pfn, key)) = got else {
            return Err(Outcome::Fail("no frame".into()));
        };
        diag!(
            "key_before_free={before_free:#04x} key_at_alloc={key:#04x} same_frame={} block_keys={block_keys:02x?}",
            got_pfn == pfn
        );
        expect_key("set with SSKE", before_free, dirty_key)?;
        if got_pfn != pfn {
            return Err(Outcome::Fail(format!(
                "the freed frame {pfn:#x} was not handed out again (got {got_pfn:#x})"
            )));
        }
        expect_key("the reallocated frame", key, PAGE_DEFAULT_KEY)?;
        match block_keys {
            Some(keys) if keys == [PAGE_DEFAULT_KEY; 4] => Ok(()),
            Some(keys) => Err(Outcome::Fail(format!(
                "an order-2 block's frames have keys {keys:02x?}"
            ))),
            None => Err(Outcome::Fail("no order-2 block".into())),
        }
    })
}

/// A frame's key after SSKE with the default key, then after a load, then
/// after a store, each through a task mapping of this CPU.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AccessKeys {
    /// After SSKE.
    pub(crate) after_sske: u8,
    /// After the load.
    pub(crate) after_load: u8,
    /// After the store.
    pub(crate) after_store: u8,
}

impl AccessKeys {
    /// Whether the store set the change bit.
    pub(crate) fn store_set_c(&self) -> bool {
        self.after_store & PAGE_CHANGED != 0
    }
}

/// The storage-key probe, shared by the `skey.change_bit_set_by_store`
/// self-test and the boot's platform probe ([`crate::platform`]): a
/// one-page mm, the frame's key reset with SSKE, a load, a store, the key
/// read with ISKE after each. Leaves no frame allocated.
pub(crate) fn probe_access_keys<A: Mmu>(k: StorageKeyOps) -> Result<AccessKeys, Outcome> {
    OnePage::<A>::with_mm(|pfn, addr| {
        k.set_storage_key(pfn, PAGE_DEFAULT_KEY);
        let after_sske = k.get_storage_key(pfn);
        // SAFETY: in the mm's writable VMA.
        let _ = unsafe { load(addr) };
        let after_load = k.get_storage_key(pfn);
        // SAFETY: as above.
        unsafe { store(addr, 0x5157) };
        let after_store = k.get_storage_key(pfn);
        AccessKeys {
            after_sske,
            after_load,
            after_store,
        }
    })
}

/// A load through a task mapping sets R only; a store sets C. Where the
/// machine sets no change bit on a store, skipped with the reason.
fn change_bit_set_by_store<A: Mmu>(_: &Cmdline) -> Outcome {
    keyed::<A>(|k| {
        let keys = probe_access_keys::<A>(k)?;
        diag!(
            "key_after_sske={:#04x} key_after_load={:#04x} key_after_store={:#04x}",
            keys.after_sske,
            keys.after_load,
            keys.after_store
        );
        expect_key("after SSKE", keys.after_sske, PAGE_DEFAULT_KEY)?;
        if !keys.store_set_c() {
            return Err(Outcome::Skip(
                crate::platform::Property::SkeyChangeBit.lacking(),
            ));
        }
        expect_key("after a load", keys.after_load, KEY_R)?;
        expect_key("after a store", keys.after_store, KEY_RC)
    })
}

/// SSKE with C clear makes the next store set C again (the storing CPU's
/// writable translation went with the old key); RRBE returns the old R and C
/// and clears only R, and the next access sets R again.
fn sske_and_rrbe_reset<A: Mmu>(_: &Cmdline) -> Outcome {
    keyed_c::<A>(|k| {
        let r = OnePage::<A>::with_mm(|pfn, addr| {
            k.set_storage_key(pfn, PAGE_DEFAULT_KEY);
            // SAFETY: in the mm's writable VMA.
            unsafe { store(addr, 1) };
            let after_store = k.get_storage_key(pfn);
            k.set_storage_key(pfn, after_store & !PAGE_CHANGED);
            let after_clear = k.get_storage_key(pfn);
            // SAFETY: as above.
            unsafe { store(addr, 2) };
            let after_second_store = k.get_storage_key(pfn);
            let rrbe = k.reset_reference_bit(pfn);
            let after_rrbe = k.get_storage_key(pfn);
            let rrbe_again = k.reset_reference_bit(pfn);
            // SAFETY: as above.
            let _ = unsafe { load(addr) };
            let after_load = k.get_storage_key(pfn);
            (
                [
                    after_store,
                    after_clear,
                    after_second_store,
                    after_rrbe,
                    after_load,
                ],
                rrbe,
                rrbe_again,
            )
        })?;
        let ([after_store, after_clear, after_second_store, after_rrbe, after_load], rrbe, rrbe2) =
            r;
        let rc = |(r, c): (bool, bool)| {
            format!("{}{}", if r { "R" } else { "-" }, if c { "C" } else { "-" })
        };
        diag!(
            "key_after_store={after_store:#04x} key_after_clear_c={after_clear:#04x} key_after_second_store={after_second_store:#04x}"
        );
        diag!(
            "rrbe_old={} key_after_rrbe={after_rrbe:#04x} rrbe_again_old={} key_after_load={after_load:#04x}",
            rc(rrbe),
            rc(rrbe2)
        );
        expect_key("after a store", after_store, KEY_RC)?;
        expect_key("after SSKE without C", after_clear, KEY_R)?;
        expect_key(
            "after a store following SSKE (C not set again: a stale writable TLB entry?)",
            after_second_store,
            KEY_RC,
        )?;
        if rrbe != (true, true) || rrbe2 != (false, true) {
            return Err(Outcome::Fail(format!(
                "RRBE returned {} then {}, expected RC then -C",
                rc(rrbe),
                rc(rrbe2)
            )));
        }
        expect_key("after RRBE", after_rrbe, PAGE_CHANGED)?;
        expect_key("after a load following RRBE", after_load, KEY_RC)
    })
}

/// Linux 3.8's `page_test_and_clear_dirty`: true once after a store, false
/// right after, true again after the next store.
fn page_test_and_clear_dirty<A: Mmu>(_: &Cmdline) -> Outcome {
    keyed_c::<A>(|k| {
        let r = OnePage::<A>::with_mm(|pfn, addr| {
            k.set_storage_key(pfn, PAGE_DEFAULT_KEY);
            let clean = k.page_test_and_clear_dirty(pfn);
            // SAFETY: in the mm's writable VMA.
            unsafe { store(addr, 1) };
            let first = k.page_test_and_clear_dirty(pfn);
            let second = k.page_test_and_clear_dirty(pfn);
            let after = k.get_storage_key(pfn);
            // SAFETY: as above.
            unsafe { store(addr, 2) };
            let again = k.page_test_and_clear_dirty(pfn);
            ([clean, first, second, again], after)
        })?;
        let ([clean, first, second, again], after) = r;
        diag!(
            "dirty_before_store={clean} after_store={first} right_after={second} after_next_store={again} key_after_clear={after:#04x}"
        );
        if [clean, first, second, again] != [false, true, false, true] {
            return Err(Outcome::Fail(format!(
                "page_test_and_clear_dirty gave {clean} (clean), {first} (stored), {second} (again), {again} (stored again)"
            )));
        }
        expect_key("after page_test_and_clear_dirty", after, KEY_R)
    })
}

static REMOTE_MM: AtomicU64 = AtomicU64::new(0);

/// On the other CPU: enter the mm, store to the page, leave.
fn remote_store<A: Mmu>(v: usize) {
    // SAFETY: the test keeps the mm alive until this call returned (it waits).
    let mm = unsafe { &*(REMOTE_MM.load(Ordering::Acquire) as *const Mm<A>) };
    // SAFETY: as above.
    unsafe { mmod::use_mm(mm) };
    // SAFETY: TASK_BASE is in the mm's writable VMA.
    unsafe { store(A::TASK_BASE, v as u64) };
    mmod::unuse_mm::<A>();
}

/// Keys are per frame: a store on CPU 1 sets C as ISKE on CPU 0 sees it, and
/// after CPU 0 clears C the next store on CPU 1 sets it again (CPU 0's SSKE
/// took CPU 1's writable translation away).
fn change_bit_on_another_cpu<A: Mmu>(_: &Cmdline) -> Outcome {
    if A::STORAGE_KEYS.is_some() && smp::nr_cpus() < 2 {
        return Outcome::Skip("needs 2 or more CPUs");
    }
    keyed_c::<A>(|k| {
        let t = OnePage::<A>::new()?;
        let pfn = t.pfn;
        REMOTE_MM.store(&*t.mm as *const Mm<A> as u64, Ordering::Release);
        k.set_storage_key(pfn, PAGE_DEFAULT_KEY);
        let before = k.get_storage_key(pfn);
        smp::smp_call_function_single::<A>(1, remote_store::<A>, 1, true);
        let after_remote = k.get_storage_key(pfn);
        let cleared = k.page_test_and_clear_dirty(pfn);
        let after_clear = k.get_storage_key(pfn);
        smp::smp_call_function_single::<A>(1, remote_store::<A>, 2, true);
        let after_second = k.get_storage_key(pfn);
        t.exit();
        diag!(
            "key_before={before:#04x} key_after_remote_store={after_remote:#04x} cleared={cleared} key_after_clear={after_clear:#04x} key_after_second_remote_store={after_second:#04x}"
        );
        expect_key("before the remote store", before, PAGE_DEFAULT_KEY)?;
        expect_key("after a store on CPU 1", after_remote, KEY_RC)?;
        if !cleared {
            return Err(Outcome::Fail(
                "page_test_and_clear_dirty on CPU 0 found C clear".into(),
            ));
        }
        expect_key("after clearing C on CPU 0", after_clear, KEY_R)?;
        expect_key(
            "after a second store on CPU 1 (C not set again: CPU 1 kept a writable TLB entry?)",
            after_second,
            KEY_RC,
        )
    })
}
