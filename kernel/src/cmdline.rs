//! The kernel command line: space-separated `key=value` words (or bare `key` for a
//! flag). Every key is known here; an unknown key, a malformed value or a repeated
//! key is an error that the boot reports as a failed result.
//!
//! | key | meaning |
//! |---|---|
//! | `test=PAT[,PAT...]` | run only the tests whose `suite.case` name contains a pattern (`*` matches any run of characters) |
//! | `seed=N` | seed for randomised runs (printed either way, to repeat a run) |
//! | `iterations=N` | iteration budget for natural-mode runs and explore runs (schedules) |
//! | `budget_s=N`, `budget_ms=N` | time budget of a natural-mode run in seconds (1 to 86400) or milliseconds (1 to 86400000), instead of the row's own; one of the two |
//! | `delays=0\|1` | natural mode: arm the rows' window-widening delays (default 1) |
//! | `stop_at_hit` | natural mode: end a run at its first hit (time-to-first-hit benchmarks) |
//! | `progress_s=N` | natural mode: print a progress line every N seconds (1 to 3600) |
//! | `scenario=NAME\|all`, `variant=NAME`, `mode=natural\|forced\|explore` | run race scenarios instead of the self-tests (`crate::race`) |
//! | `bound=K` | explore mode: the highest preemption bound, 0 to 16, reached from bound 0 one exhausted bound at a time (default: 2, then higher while the space is small enough to run every ordering) |
//! | `schedule=S` | forced mode of one row: run the schedule `S` (`role@point,role~point,...`, as explore prints it) instead of the row's own |
//! | `flush=ipi\|nmi\|ipte\|csp` | race scenarios: only the cases under this TLB flush strategy (rows with a flush axis; the architecture must implement it) |
//! | `list` | print every race row (with its seed thread and Linux commits), every variant (with the kernel it models and whether this architecture accepts it) and every self-test suite and case, instead of running anything (`crate::list`) |
//! | `tick_hz=N` | timer tick rate, 1..=10000 (default 100) |
//! | `mem=SIZE` | ignore RAM at and above physical address SIZE (`K`, `M`, `G` suffixes), as Linux's `mem=` |
//! | `dirty=softdirty\|skey` | dirty tracking of shared file pages (`mm::dirty`): PTE dirty bits with write-notify (default), or the storage key's change bit (only with storage keys: refused at boot otherwise) |
//! | `bench.curves` | the throughput self-tests (`gather.zap_throughput`, `gup.throughput`) also measure their cost curves, 1 to 2048 pages (`cargo xtask bench`) |
//! | `selftest.fail` | make the `requested_failure` self-test fail |
//! | `selftest.panic=CPU` | make CPU `CPU` panic during the self-tests |
//! | `selftest.fault=CPU` | make CPU `CPU` load from an unmapped address during the self-tests (an unhandled exception, with its backtrace) |
//! | `selftest.hang` | hang after bring-up (the host must time out) |
//! | `selftest.crash` | end the machine without the final status line |

use alloc::vec::Vec;
use core::fmt;

/// Race-scenario mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Roles run free, optionally with random delays at race points.
    Natural,
    /// A schedule over race points forces the interleaving.
    Forced,
    /// Every ordering of the roles' race points and synchronisation events
    /// is run, one schedule per iteration ([`crate::race::explore`]).
    Explore,
}

/// The parsed command line.
#[derive(Debug, PartialEq, Eq)]
pub struct Cmdline<'a> {
    /// Test name patterns; empty means every test.
    pub tests: Vec<&'a str>,
    /// Seed for randomised runs.
    pub seed: u64,
    /// Whether `seed` was given (otherwise it is a default, still printed).
    pub seed_given: bool,
    /// Iteration budget.
    pub iterations: Option<u64>,
    /// Natural-mode time budget in milliseconds (`budget_s` or `budget_ms`).
    pub budget_ms: Option<u64>,
    /// Natural mode: arm the window-widening delays.
    pub delays: bool,
    /// Natural mode: seconds between progress lines.
    pub progress_s: Option<u64>,
    /// Natural mode: end a run at its first hit.
    pub stop_at_hit: bool,
    /// Scenario name.
    pub scenario: Option<&'a str>,
    /// Variant name.
    pub variant: Option<&'a str>,
    /// `flush=`: the flush strategy of the scenario cases to run.
    pub flush: Option<&'a str>,
    /// Scenario mode.
    pub mode: Option<Mode>,
    /// `bound=`: explore mode's preemption bound (`None`: the default).
    pub bound: Option<u32>,
    /// `schedule=`: a forced schedule in text form, replacing the row's
    /// ([`crate::race::point::parse_schedule`]).
    pub schedule: Option<&'a str>,
    /// `inject=`: a self-check that breaks the kernel on purpose (only with
    /// `scenario=`).
    pub inject: Option<crate::race::scenario::Inject>,
    /// `list`: print what the kernel has instead of running it.
    pub list: bool,
    /// Timer tick rate.
    pub tick_hz: u32,
    /// `mem=`: RAM at and above this physical address is not used.
    pub mem_limit: Option<u64>,
    /// `dirty=`: the dirty-tracking mode, if given.
    pub dirty: Option<crate::mm::dirty::DirtyTracking>,
    /// `bench.curves`: the throughput self-tests also sweep their sizes.
    pub curves: bool,
    /// `selftest.fail`.
    pub fail: bool,
    /// `selftest.panic=CPU`.
    pub panic_cpu: Option<usize>,
    /// `selftest.fault=CPU`.
    pub fault_cpu: Option<usize>,
    /// `selftest.hang`.
    pub hang: bool,
    /// `selftest.crash`.
    pub crash: bool,
}

/// Why a command line was rejected.
#[derive(Debug, PartialEq, Eq)]
pub enum CmdlineError<'a> {
    /// A key no one knows.
    UnknownKey(&'a str),
    /// A key whose value is missing or malformed.
    BadValue {
        key: &'a str,
        value: &'a str,
        expected: &'static str,
    },
    /// A key given twice.
    Repeated(&'a str),
}

impl fmt::Display for CmdlineError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKey(k) => write!(f, "unknown key '{k}'"),
            Self::BadValue {
                key,
                value,
                expected,
            } => {
                write!(f, "bad value '{value}' for '{key}': expected {expected}")
            }
            Self::Repeated(k) => write!(f, "key '{k}' given more than once"),
        }
    }
}

/// Default seed when none is given.
pub const DEFAULT_SEED: u64 = 0x5eed_0f91_e5ce;

impl<'a> Cmdline<'a> {
    /// Parses a command line.
    pub fn parse(line: &'a str) -> Result<Self, CmdlineError<'a>> {
        let mut c = Cmdline {
            tests: Vec::new(),
            seed: DEFAULT_SEED,
            seed_given: false,
            iterations: None,
            budget_ms: None,
            delays: true,
            progress_s: None,
            stop_at_hit: false,
            scenario: None,
            variant: None,
            flush: None,
            mode: None,
            bound: None,
            schedule: None,
            inject: None,
            list: false,
            tick_hz: 100,
            mem_limit: None,
            dirty: None,
            fail: false,
            panic_cpu: None,
            fault_cpu: None,
            hang: false,
            crash: false,
            curves: false,
        };
        let mut seen: Vec<&str> = Vec::new();
        for word in line.split_ascii_whitespace() {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word, None),
            };
            if seen.contains(&key) {
                return Err(CmdlineError::Repeated(key));
            }
            if matches!(key, "budget_s" | "budget_ms")
                && seen.iter().any(|k| matches!(*k, "budget_s" | "budget_ms"))
            {
                return Err(CmdlineError::BadValue {
                    key,
                    value: value.unwrap_or(""),
                    expected: "one time budget: budget_s or budget_ms, not both",
                });
            }
            seen.push(key);
            let need = |expected: &'static str| -> Result<&'a str, CmdlineError<'a>> {
                match value {
                    Some(v) if !v.is_empty() => Ok(v),
                    _ => Err(CmdlineError::BadValue {
                        key,
                        value: value.unwrap_or(""),
                        expected,
                    }),
                }
            };
            let flag = || -> Result<bool, CmdlineError<'a>> {
                match value {
                    None | Some("1") | Some("yes") => Ok(true),
                    Some("0") | Some("no") => Ok(false),
                    Some(v) => Err(CmdlineError::BadValue {
                        key,
                        value: v,
                        expected: "no value, 0 or 1",
                    }),
                }
            };
            let number = |expected: &'static str| -> Result<u64, CmdlineError<'a>> {
                let v = need(expected)?;
                parse_u64(v).ok_or(CmdlineError::BadValue {
                    key,
                    value: v,
                    expected,
                })
            };
            let ranged =
                |lo: u64, hi: u64, expected: &'static str| -> Result<u64, CmdlineError<'a>> {
                    let n = number(expected)?;
                    if (lo..=hi).contains(&n) {
                        Ok(n)
                    } else {
                        Err(CmdlineError::BadValue {
                            key,
                            value: value.unwrap_or(""),
                            expected,
                        })
                    }
                };
            match key {
                "test" => {
                    let v = need("comma-separated test name patterns")?;
                    c.tests = v.split(',').filter(|p| !p.is_empty()).collect();
                }
                "seed" => {
                    c.seed = number("a number (decimal or 0x hex)")?;
                    c.seed_given = true;
                }
                "iterations" => c.iterations = Some(number("a number")?),
                "budget_s" => {
                    c.budget_ms = Some(ranged(1, 86_400, "seconds from 1 to 86400")? * 1000)
                }
                "budget_ms" => {
                    c.budget_ms = Some(ranged(1, 86_400_000, "milliseconds from 1 to 86400000")?)
                }
                "delays" => c.delays = flag()?,
                "stop_at_hit" => c.stop_at_hit = flag()?,
                "progress_s" => c.progress_s = Some(ranged(1, 3_600, "seconds from 1 to 3600")?),
                "scenario" => c.scenario = Some(need("a scenario name")?),
                "variant" => c.variant = Some(need("a variant name")?),
                "flush" => {
                    let v = need("ipi, nmi, ipte or csp")?;
                    if crate::mm::tlbflush::FlushStrategy::from_name(v).is_none() {
                        return Err(CmdlineError::BadValue {
                            key,
                            value: v,
                            expected: "ipi, nmi, ipte or csp",
                        });
                    }
                    c.flush = Some(v);
                }
                "mode" => {
                    c.mode = Some(match need("natural, forced or explore")? {
                        "natural" => Mode::Natural,
                        "forced" => Mode::Forced,
                        "explore" => Mode::Explore,
                        v => {
                            return Err(CmdlineError::BadValue {
                                key,
                                value: v,
                                expected: "natural, forced or explore",
                            })
                        }
                    })
                }
                "bound" => {
                    let b = number("a preemption bound from 0 to 16")?;
                    if b > 16 {
                        return Err(CmdlineError::BadValue {
                            key,
                            value: value.unwrap_or(""),
                            expected: "a preemption bound from 0 to 16",
                        });
                    }
                    c.bound = Some(b as u32);
                }
                "schedule" => c.schedule = Some(need("a schedule: role@point,role~point,...")?),
                "inject" => {
                    let v = need("deadlock, late-finding misplaced-point or apart")?;
                    c.inject = Some(crate::race::scenario::Inject::from_name(v).ok_or(
                        CmdlineError::BadValue {
                            key,
                            value: v,
                            expected: "deadlock, late-finding misplaced-point or apart",
                        },
                    )?);
                }
                "list" => c.list = flag()?,
                "tick_hz" => {
                    let hz = number("a rate from 1 to 10000")?;
                    if !(1..=10_000).contains(&hz) {
                        return Err(CmdlineError::BadValue {
                            key,
                            value: value.unwrap_or(""),
                            expected: "a rate from 1 to 10000",
                        });
                    }
                    c.tick_hz = hz as u32;
                }
                "mem" => {
                    let v = need("a size: a number with an optional K, M or G suffix")?;
                    c.mem_limit = Some(parse_size(v).ok_or(CmdlineError::BadValue {
                        key,
                        value: v,
                        expected: "a size: a number with an optional K, M or G suffix",
                    })?);
                }
                "dirty" => {
                    let v = need("softdirty or skey")?;
                    c.dirty = Some(crate::mm::dirty::DirtyTracking::from_name(v).ok_or(
                        CmdlineError::BadValue {
                            key,
                            value: v,
                            expected: "softdirty or skey",
                        },
                    )?);
                }
                "bench.curves" => c.curves = flag()?,
                "selftest.fail" => c.fail = flag()?,
                "selftest.panic" => c.panic_cpu = Some(number("a CPU number")? as usize),
                "selftest.fault" => c.fault_cpu = Some(number("a CPU number")? as usize),
                "selftest.hang" => c.hang = flag()?,
                "selftest.crash" => c.crash = flag()?,
                _ => return Err(CmdlineError::UnknownKey(key)),
            }
        }
        if c.schedule.is_some()
            && (matches!(c.scenario, None | Some("all")) || c.mode != Some(Mode::Forced))
        {
            return Err(CmdlineError::BadValue {
                key: "schedule",
                value: "",
                expected: "a forced run of one row: schedule= goes with scenario=ROW mode=forced",
            });
        }
        if c.inject.is_some() && c.scenario.is_none() {
            return Err(CmdlineError::BadValue {
                key: "inject",
                value: "",
                expected: "a scenario run: inject= goes with scenario=",
            });
        }
        Ok(c)
    }

    /// Whether the test `suite.case` is selected by the `test=` patterns.
    pub fn selects(&self, suite: &str, case: &str) -> bool {
        if self.tests.is_empty() {
            return true;
        }
        let mut full = alloc::string::String::with_capacity(suite.len() + case.len() + 1);
        full.push_str(suite);
        full.push('.');
        full.push_str(case);
        self.tests.iter().any(|p| matches_pattern(p, &full))
    }
}

fn parse_u64(v: &str) -> Option<u64> {
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// A size as Linux's `memparse`: a number with an optional `K`, `M` or `G`.
fn parse_size(v: &str) -> Option<u64> {
    let (num, shift) = match v.as_bytes().last()? {
        b'K' | b'k' => (&v[..v.len() - 1], 10),
        b'M' | b'm' => (&v[..v.len() - 1], 20),
        b'G' | b'g' => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    parse_u64(num)?.checked_mul(1 << shift)
}

/// Substring match with `*` wildcards: `gup*fast` matches `mm.gup_fast_pins`.
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    let mut rest = name;
    let mut parts = pattern.split('*').peekable();
    while let Some(part) = parts.next() {
        match rest.find(part) {
            Some(pos) => rest = &rest[pos + part.len()..],
            None => return false,
        }
        if parts.peek().is_none() {
            break;
        }
    }
    true
}

#[cfg(test)]
mod tests;
