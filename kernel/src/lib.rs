//! quiesce: the arch-generic core of a bare-metal testbed kernel for Linux
//! memory-management races.
//!
//! The backend binary (`arch/*`) boots the machine and calls [`boot_cpu_main`] on
//! the boot CPU. From there the generic kernel prints the KTAP header, lets the
//! backend set up the machine, sets up the heap, reads the command
//! line, brings every CPU online ([`smp`]), starts the per-CPU timer tick and runs
//! what the command line selects, reporting in KTAP ([`ktap`]) and ending with one
//! final status line ([`exit`]).
//!
//! Invariants kept throughout:
//! - Console output is serialised line by line ([`console`]), so lines from several
//!   CPUs never interleave inside a line.
//! - A panic on any CPU stops all CPUs and fails the run ([`panic`]).
//! - The run's verdict is the final status line; the exit code only agrees with it.
//!
//! Tests sit beside the code they test, never inside it, in two kinds:
//! - In-kernel self-tests (KTAP suites every boot runs on the real machines):
//!   [`selftest`] for the boot foundation, one folder per area with one file
//!   per suite (`mm::selftest`), and `race/selftest.rs`;
//!   `selftest::suites()` is the one list of them all. They check leaks with
//!   `mm::selftest::leak_checked`.
//! - Host unit tests (`cargo test -p quiesce-kernel`, on the emulated arches of
//!   `mm::emul`): a module's tests are an inline `#[cfg(test)] mod tests { ... }`
//!   at the end of its file while they are short (up to about 150 lines);
//!   longer ones are a `tests.rs` child in the module's folder (`mm/gup.rs`
//!   declares `#[cfg(test)] mod tests;`, the tests are `mm/gup/tests.rs`), never
//!   a `#[path]` or a `_tests.rs` sibling. They check leaks with
//!   `mm::selftest::assert_no_leak`.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod arch;
pub mod backtrace;
pub mod cmdline;
pub mod console;
pub mod heap;
pub mod irq;
pub mod ktap;
pub mod list;
pub mod mm;
pub mod panic;
pub mod percpu;
pub mod platform;
pub mod race;
pub mod rcu;
pub mod selftest;
pub mod smp;
pub mod time;

pub use arch::{Arch, BootInfo, IrqFlags};

/// The final status line's prefix. The host decides a run from this line and the
/// KTAP before it; a run without it crashed.
pub const STATUS_PREFIX: &str = "quiesce: status=";

/// Largest CPU count the kernel supports.
pub const NR_CPUS: usize = 64;

/// Entry of the generic kernel on the boot CPU (Linux `start_kernel`). Never
/// returns: the machine ends through [`exit`].
///
/// As Linux prints its banner before `setup_arch`, the `KTAP version 1` header
/// comes first, and the backend's machine set-up runs after it: `setup_arch`
/// (the backend's own clock calibration, kernel map, CPU and memory discovery)
/// returns what the generic kernel needs. Before this call the backend has set
/// up only what printing and a fault need (console, exception handlers).
pub fn boot_cpu_main<A: mm::arch::Mmu>(setup_arch: impl FnOnce() -> BootInfo) -> ! {
    console::register(A::console_write);
    kprintln!("KTAP version 1");
    let boot = setup_arch();
    heap::init();
    heap::init_irq::<A>();
    percpu::init_boot_cpu::<A>();
    race::init::<A>();
    kprintln!("# quiesce arch={} cpus={}", A::NAME, boot.nr_cpus);

    let mut run = ktap::Run::new();
    let args = match cmdline::Cmdline::parse(boot.cmdline) {
        Ok(args) => args,
        Err(err) => {
            // Reported as a result, not ignored: the run fails.
            kprintln!("# cmdline={:?}", boot.cmdline);
            run.plan(1);
            run.result(false, "cmdline", Some(&alloc::format!("{err}")));
            exit::<A>(false, "bad command line");
        }
    };
    kprintln!("# cmdline={:?} seed={}", boot.cmdline, args.seed);

    if boot.nr_cpus == 0 || boot.nr_cpus > NR_CPUS {
        kprintln!(
            "# error: {} CPUs present, supported 1..={}",
            boot.nr_cpus,
            NR_CPUS
        );
        exit::<A>(false, "unsupported CPU count");
    }
    if let Err(err) = mm::memmap::init::<A>(&boot.memory, args.mem_limit) {
        kprintln!("# error: {err}");
        exit::<A>(
            false,
            match err {
                mm::memmap::MemInitError::TooLittle { .. } => "too little memory",
                _ => "no usable memory map",
            },
        );
    }
    if let Some(mode) = args.dirty {
        if let Err(err) = mm::dirty::set_dirty_tracking::<A>(mode) {
            // `dirty=skey` without storage keys: refused, never a fallback.
            run.plan(1);
            run.result(
                false,
                "cmdline",
                Some(&alloc::format!("dirty={}: {err}", mode.name())),
            );
            exit::<A>(false, "bad command line");
        }
        kprintln!("# dirty tracking: {}", mode.name());
    }
    time::set_tick_hz(args.tick_hz);
    smp::bring_up_cpus::<A>(boot.nr_cpus);
    time::start_this_cpu_tick::<A>();
    A::local_irq_enable();

    if args.hang {
        // Asked for on the command line, to prove the host times out on a hang.
        kprintln!("# hanging on purpose (selftest.hang)");
        A::local_irq_enable();
        loop {
            A::wait_for_interrupt();
        }
    }
    if args.crash {
        // Asked for on the command line: the machine ends without the final status
        // line, as a crash would, and with the success exit code.
        kprintln!("# leaving without a status line on purpose (selftest.crash)");
        A::exit(true);
    }

    if !args.list {
        // Before any result: what the machine does that the races need.
        platform::probe::<A>();
    }
    let ok = selftest::run_all::<A>(&args, &mut run);
    exit::<A>(
        ok,
        if ok {
            "all tests passed"
        } else {
            "a test failed"
        },
    )
}

/// Prints the final status line and ends the machine.
pub fn exit<A: Arch>(success: bool, why: &str) -> ! {
    let word = if success { "pass" } else { "fail" };
    kprintln!("{STATUS_PREFIX}{word} ({why})");
    A::exit(success)
}
