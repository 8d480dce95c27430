//! Serialised console output.
//!
//! The backend's raw writer is registered once at boot. [`kprint!`] and
//! [`kprintln!`] format into a per-call line buffer and emit it under one lock, so
//! a line is never torn by another CPU. Panic and exception context print through
//! [`emergency_print`], which gives up waiting for the lock after a bounded time:
//! the CPU holding it may have stopped for good.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicPtr, Ordering};

static WRITER: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());
static LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// Registers the backend's raw console writer.
pub fn register(write: fn(&[u8])) {
    WRITER.store(write as *mut (), Ordering::Release);
}

fn raw_write(bytes: &[u8]) {
    let p = WRITER.load(Ordering::Acquire);
    if p.is_null() {
        return;
    }
    // SAFETY: the only non-null value ever stored is a `fn(&[u8])` in `register`.
    let write: fn(&[u8]) = unsafe { core::mem::transmute::<*mut (), fn(&[u8])>(p) };
    write(bytes);
}

/// A fixed-size line buffer; longer output is flushed in pieces.
struct LineBuf {
    buf: [u8; 256],
    len: usize,
}

impl LineBuf {
    fn flush(&mut self) {
        raw_write(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let _guard = LOCK.lock();
    let mut line = LineBuf {
        buf: [0; 256],
        len: 0,
    };
    let _ = line.write_fmt(args);
    line.flush();
}

/// Prints from panic or exception context: takes the lock if it can get it within
/// a bounded number of tries, and prints anyway otherwise.
pub fn emergency_print(args: fmt::Arguments) {
    let mut guard = None;
    for _ in 0..1_000_000 {
        if let Some(g) = LOCK.try_lock() {
            guard = Some(g);
            break;
        }
        core::hint::spin_loop();
    }
    let mut line = LineBuf {
        buf: [0; 256],
        len: 0,
    };
    let _ = line.write_fmt(args);
    line.flush();
    drop(guard);
}

/// Prints to the console.
#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

/// Prints a line to the console.
#[macro_export]
macro_rules! kprintln {
    () => { $crate::console::_print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Prints a line from exception or panic context (see [`emergency_print`]).
#[macro_export]
macro_rules! kprintln_emergency {
    ($($arg:tt)*) => { $crate::console::emergency_print(format_args!("{}\n", format_args!($($arg)*))) };
}
