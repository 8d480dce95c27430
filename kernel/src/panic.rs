//! Kernel panic: on any CPU, prints the message, the CPU number and the
//! backtrace ([`crate::backtrace`]), stops every CPU and fails the run.
//!
//! The first CPU to panic owns the machine; a CPU that panics while another panic
//! is being handled parks itself with interrupts off, waiting to be stopped.

use crate::{kprintln_emergency, Arch, STATUS_PREFIX};
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

static PANICKING: AtomicBool = AtomicBool::new(false);

/// Called from the backend's `#[panic_handler]`.
pub fn panic<A: Arch>(info: &PanicInfo) -> ! {
    A::local_irq_disable();
    let cpu = A::smp_processor_id();
    if PANICKING.swap(true, Ordering::AcqRel) {
        kprintln_emergency!(
            "# PANIC on CPU {cpu} during another panic: {}",
            info.message()
        );
        loop {
            A::cpu_relax();
        }
    }
    kprintln_emergency!("# PANIC on CPU {cpu}: {}", info.message());
    if let Some(loc) = info.location() {
        kprintln_emergency!("# panic_location={}:{}", loc.file(), loc.line());
    }
    // An exception that ends in this panic printed the faulting context's
    // backtrace already; the panic machinery's frames would only hide it.
    if !crate::backtrace::shown(cpu) {
        crate::backtrace::dump_stack::<A>();
    }
    A::stop_other_cpus();
    kprintln_emergency!("{STATUS_PREFIX}fail (panic on CPU {cpu})");
    A::exit(false)
}
