//! The early and only console: the 8250/16550 UART COM1 at I/O port 0x3f8
//! (Linux: `arch/x86/boot/early_serial_console.c`).
//!
//! Design: polled output, no interrupts. [`init`] programs 115200 8N1 with FIFOs
//! on; [`write`] waits (bounded) for the transmit holding register to be empty
//! before each byte, so output is not lost when QEMU's backend is slow.
//!
//! The UART is reached through I/O ports (`in`/`out`), not MMIO, so it uses
//! the `x86_64` crate's `Port`, not the `volatile` crate (which is for memory
//! accesses; the LAPIC uses it).
//!
//! Invariants: callers serialise (the generic console holds its lock, or is in
//! emergency context); only this module touches ports 0x3f8-0x3ff.

use x86_64::instructions::port::Port;

const COM1: u16 = 0x3f8;
const UART_TX: u16 = 0; // transmit holding register (DLAB=0)
const UART_DLL: u16 = 0; // divisor latch low (DLAB=1)
const UART_IER: u16 = 1; // interrupt enable (DLAB=0)
const UART_DLM: u16 = 1; // divisor latch high (DLAB=1)
const UART_FCR: u16 = 2;
const UART_LCR: u16 = 3;
const UART_MCR: u16 = 4;
const UART_LSR: u16 = 5;
const UART_LSR_THRE: u8 = 0x20;

fn serial_out(reg: u16, value: u8) {
    debug_assert!(reg < 8);
    // SAFETY: COM1's registers (0x3f8..0x400) belong to this module alone; port
    // I/O touches no memory.
    unsafe { Port::<u8>::new(COM1 + reg).write(value) }
}

fn serial_in(reg: u16) -> u8 {
    debug_assert!(reg < 8);
    // SAFETY: as in `serial_out`; the register read here (LSR) has no side effect
    // that matters to transmission.
    unsafe { Port::<u8>::new(COM1 + reg).read() }
}

/// Programs COM1 for 115200 baud, 8 data bits, no parity, 1 stop bit.
pub fn init() {
    serial_out(UART_IER, 0x00);
    serial_out(UART_LCR, 0x80); // DLAB on
    serial_out(UART_DLL, 0x01); // 115200 / 1
    serial_out(UART_DLM, 0x00);
    serial_out(UART_LCR, 0x03); // DLAB off, 8N1
    serial_out(UART_FCR, 0xc7); // FIFOs on and cleared, 14-byte threshold
    serial_out(UART_MCR, 0x03); // DTR, RTS
}

/// Writes bytes to COM1.
pub fn write(bytes: &[u8]) {
    for &b in bytes {
        for _ in 0..100_000 {
            if serial_in(UART_LSR) & UART_LSR_THRE != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        serial_out(UART_TX, b);
    }
}
