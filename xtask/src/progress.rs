//! Progress of long runs (`bench`, `soak`): on a terminal one status line
//! rewritten in place; otherwise plain lines, at most one per
//! [`PLAIN_INTERVAL`], so CI logs stay readable.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Least time between two plain progress lines.
pub const PLAIN_INTERVAL: Duration = Duration::from_secs(10);

/// A progress display.
pub struct Progress {
    tty: bool,
    started: Instant,
    last_plain: Option<Instant>,
    shown: bool,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// A display on stdout, in place if stdout is a terminal.
    pub fn new() -> Self {
        Self::with_tty(std::io::stdout().is_terminal())
    }

    /// A display that is (or is not) rewritten in place.
    pub fn with_tty(tty: bool) -> Self {
        Self {
            tty,
            started: Instant::now(),
            last_plain: None,
            shown: false,
        }
    }

    /// Time since the display was made.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The status text for `done` of `total` units, with the time left
    /// estimated from the rate so far.
    pub fn status(&self, what: &str, done: usize, total: usize, extra: &str) -> String {
        let el = self.elapsed().as_secs_f64();
        let left = if done > 0 && done < total {
            format!(
                ", ~{} left",
                crate::soak::human_secs(el / done as f64 * (total - done) as f64)
            )
        } else {
            String::new()
        };
        format!(
            "{what}: {done}/{total} done, {} elapsed{left}{}{extra}",
            crate::soak::human_secs(el),
            if extra.is_empty() { "" } else { "; " }
        )
    }

    /// Shows [`Progress::status`] of `what`: `done` of `total` done, now
    /// `extra`.
    pub fn show(&mut self, what: &str, done: usize, total: usize, extra: &str) {
        let line = self.status(what, done, total, extra);
        self.update(&line);
    }

    /// Shows `line` as the current status (rate-limited when plain).
    pub fn update(&mut self, line: &str) {
        if self.tty {
            print!("\r\x1b[2K{line}");
            let _ = std::io::stdout().flush();
            self.shown = true;
        } else if self
            .last_plain
            .is_none_or(|t| t.elapsed() >= PLAIN_INTERVAL)
        {
            self.last_plain = Some(Instant::now());
            println!("{line}");
        }
    }

    /// Prints a line of output above the status line.
    pub fn println(&mut self, text: &str) {
        if self.tty && self.shown {
            print!("\r\x1b[2K");
            self.shown = false;
        }
        println!("{text}");
    }

    /// Clears the status line (on a terminal).
    pub fn finish(&mut self) {
        if self.tty && self.shown {
            print!("\r\x1b[2K");
            let _ = std::io::stdout().flush();
            self.shown = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_estimates_the_time_left() {
        let p = Progress::with_tty(false);
        let s = p.status("bench", 0, 10, "");
        assert!(
            s.starts_with("bench: 0/10 done, ") && !s.contains("left"),
            "{s}"
        );
        let s = p.status("bench", 5, 10, "s390x tlb");
        assert!(
            s.contains("5/10 done") && s.contains("left; s390x tlb"),
            "{s}"
        );
        assert!(!p.status("bench", 10, 10, "").contains("left"));
    }
}
