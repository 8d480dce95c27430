//! Shared helpers of the boot tests.
