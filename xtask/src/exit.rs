//! Exit status of `cargo xtask`, the same for every subcommand:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | every boot, test and cell passed |
//! | 1 | a test or cell failed (a mismatch, a failed boot, a lint error) |
//! | 2 | a usage error: an unknown option, value, scenario or variant |
//! | 3 | a set-up or harness error: something could not be installed, QEMU or a kernel file is unusable, a boot could not be started |

use std::fmt;

/// A test or cell failed.
pub const FAILED: u8 = 1;
/// A usage error (clap uses 2 for its own).
pub const USAGE: u8 = 2;
/// A set-up or harness error.
pub const HARNESS: u8 = 3;

/// An error in what the user asked for; `main` exits with [`USAGE`].
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A usage error with `msg`.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}
