//! Kernel backtraces: the `# backtrace:` lines a panic or an unhandled
//! exception prints (the format is in `kernel/src/backtrace.rs`), parsed and
//! symbolised from the kernel ELF's DWARF with `addr2line`.
//!
//! A frame is looked up at its PC (`#0 pc=`, an exception's faulting
//! instruction) or at its return address minus one (`ra=`, `lr=`: the call
//! instruction lies before the return address, and its last byte names the
//! call's line, not the next statement's). A lookup gives the inline chain,
//! innermost first, each with its demangled function and `file:line`; paths
//! under the workspace root are shown relative to it (`kernel/src/...rs`).
//! The link-register value (`lr=`, s390x exceptions) is shown as a frame only
//! when it names a function other than frame 0's and is not the next frame's
//! address: then frame 0 was a leaf without a frame, whose caller the chain
//! skipped. The report numbers the frames it shows from 0.
//!
//! Invariants: symbolising never fails a report. A missing or unreadable ELF,
//! or an address without debug info, still shows the raw addresses, with one
//! line saying why there are no names.

use std::fmt::Write as _;
use std::path::Path;

/// What a frame's address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrKind {
    /// The faulting instruction of an exception (only frame 0).
    Pc,
    /// The link register at an exception: maybe frame 0's return address.
    Lr,
    /// A return address: the call is just before it.
    Ra,
}

/// One `# backtrace: cpu=N #k pc=|ra=ADDR` or `cpu=N lr=ADDR` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawFrame {
    /// The frame number `k` (0 for `lr`, which follows frame 0).
    pub index: usize,
    /// PC or return address.
    pub kind: AddrKind,
    /// The address.
    pub addr: u64,
}

impl RawFrame {
    /// The address to look up: the PC itself, or inside the call before a
    /// return address.
    pub fn lookup_addr(&self) -> u64 {
        match self.kind {
            AddrKind::Pc => self.addr,
            AddrKind::Lr | AddrKind::Ra => self.addr.saturating_sub(1),
        }
    }
}

/// One CPU's backtrace, as the console carried it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backtrace {
    /// The CPU that printed it.
    pub cpu: usize,
    /// Its frames, in order.
    pub frames: Vec<RawFrame>,
    /// Why the kernel's walk stopped (the `end (...)` line), if printed.
    pub end: Option<String>,
}

/// The prefix of every backtrace line.
pub const LINE_PREFIX: &str = "# backtrace: ";

/// One parsed backtrace line.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Line {
    Frame(usize, RawFrame),
    End(usize, String),
}

fn parse_line(line: &str) -> Option<Line> {
    let rest = line.trim().strip_prefix(LINE_PREFIX)?;
    let rest = rest.strip_prefix("cpu=")?;
    let (cpu, rest) = rest.split_once(' ')?;
    let cpu: usize = cpu.parse().ok()?;
    if let Some(reason) = rest.strip_prefix("end") {
        let reason = reason.trim().trim_start_matches('(').trim_end_matches(')');
        return Some(Line::End(cpu, reason.to_string()));
    }
    if let Some(hex) = rest.strip_prefix("lr=") {
        let addr = u64::from_str_radix(hex.trim().strip_prefix("0x")?, 16).ok()?;
        let kind = AddrKind::Lr;
        return Some(Line::Frame(
            cpu,
            RawFrame {
                index: 0,
                kind,
                addr,
            },
        ));
    }
    let (index, addr) = rest.strip_prefix('#')?.split_once(' ')?;
    let index: usize = index.parse().ok()?;
    let (kind, hex) = if let Some(h) = addr.strip_prefix("pc=") {
        (AddrKind::Pc, h)
    } else {
        (AddrKind::Ra, addr.strip_prefix("ra=")?)
    };
    let addr = u64::from_str_radix(hex.trim().strip_prefix("0x")?, 16).ok()?;
    Some(Line::Frame(cpu, RawFrame { index, kind, addr }))
}

/// Every backtrace in the console, in the order they began. A backtrace
/// begins with its CPU's frame `#0`; lines of several CPUs may interleave.
/// Lines that do not parse are left out.
pub fn parse(console: &[String]) -> Vec<Backtrace> {
    let mut out: Vec<Backtrace> = Vec::new();
    // Index in `out` of each CPU's open backtrace.
    let mut open: Vec<(usize, usize)> = Vec::new();
    for line in console {
        match parse_line(line) {
            Some(Line::Frame(cpu, frame)) => {
                let slot = open.iter().position(|&(c, _)| c == cpu);
                match slot {
                    Some(s) if frame.index != 0 || frame.kind == AddrKind::Lr => {
                        out[open[s].1].frames.push(frame)
                    }
                    // A link register outside a trace.
                    None if frame.kind == AddrKind::Lr => {}
                    _ => {
                        open.retain(|&(c, _)| c != cpu);
                        open.push((cpu, out.len()));
                        out.push(Backtrace {
                            cpu,
                            frames: vec![frame],
                            end: None,
                        });
                    }
                }
            }
            Some(Line::End(cpu, reason)) => {
                if let Some(s) = open.iter().position(|&(c, _)| c == cpu) {
                    out[open[s].1].end = Some(reason);
                    open.remove(s);
                }
            }
            None => {}
        }
    }
    out
}

/// One function of an address's inline chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    /// The demangled function name, if known.
    pub function: Option<String>,
    /// `file:line`, relative to the workspace root where it lies below it.
    pub location: Option<String>,
}

/// Symbolises addresses of one kernel ELF.
pub struct Symbolizer {
    loader: addr2line::Loader,
    root: std::path::PathBuf,
}

impl Symbolizer {
    /// Loads the DWARF of `elf`; locations under `root` are shown relative
    /// to it. The error is one line, for the report.
    pub fn new(elf: &Path, root: &Path) -> Result<Self, String> {
        if !elf.is_file() {
            return Err(format!("no kernel ELF at {}", elf.display()));
        }
        let loader = addr2line::Loader::new(elf)
            .map_err(|e| format!("cannot read the kernel ELF {}: {e}", elf.display()))?;
        Ok(Symbolizer {
            loader,
            root: root.to_path_buf(),
        })
    }

    /// The inline chain at `addr`, innermost function first; empty when
    /// nothing is known. Falls back to the ELF symbol table without DWARF.
    pub fn lookup(&self, addr: u64) -> Vec<Symbol> {
        let mut chain = Vec::new();
        if let Ok(mut frames) = self.loader.find_frames(addr) {
            while let Ok(Some(frame)) = frames.next() {
                let function = frame
                    .function
                    .as_ref()
                    .and_then(|f| f.demangle().ok())
                    .map(|name| name.into_owned());
                let location = frame.location.as_ref().and_then(|l| {
                    let file = l.file?;
                    Some(match l.line {
                        Some(line) => format!("{}:{line}", self.relative(file)),
                        None => self.relative(file),
                    })
                });
                if function.is_some() || location.is_some() {
                    chain.push(Symbol { function, location });
                }
            }
        }
        if chain.is_empty() {
            if let Some(sym) = self.symtab_fallback(addr) {
                chain.push(sym);
            }
        }
        chain
    }

    /// The ELF symbol at or before `addr`, as `name+0xoffset`, for code
    /// without DWARF (assembly). The symbol map has no sizes and skips
    /// untyped labels, so a symbol that DWARF describes must be some other
    /// function that `addr` lies beyond: no name then rather than a wrong one.
    fn symtab_fallback(&self, addr: u64) -> Option<Symbol> {
        let sym = self.loader.find_symbol_info(addr)?;
        let described = self
            .loader
            .find_frames(sym.address())
            .is_ok_and(|mut f| matches!(f.next(), Ok(Some(_))));
        if described {
            return None;
        }
        let name = addr2line::demangle_auto(sym.name().into(), None);
        let offset = addr - sym.address();
        Some(Symbol {
            function: Some(if offset == 0 {
                name.into_owned()
            } else {
                format!("{name}+{offset:#x}")
            }),
            location: None,
        })
    }

    fn relative(&self, file: &str) -> String {
        match Path::new(file).strip_prefix(&self.root) {
            Ok(rel) => rel.display().to_string(),
            Err(_) => file.to_string(),
        }
    }
}

/// The report section for every backtrace in `console`, symbolised from
/// `elf`; empty when there is none.
///
/// ```text
///   backtrace (CPU 2):
///     #0 0x000000000008d83a core::ptr::read_volatile::<u64> at .../core/src/ptr/mod.rs:2107
///                           inlined into quiesce_kernel::selftest::load_unmapped at kernel/src/selftest.rs:427
///     #1 0x000000000008d5c4 quiesce_kernel::selftest::fault_here at kernel/src/selftest.rs:436
///     (walk ended: null frame pointer)
/// ```
pub fn report(console: &[String], elf: &Path, root: &Path) -> String {
    let traces = parse(console);
    if traces.is_empty() {
        return String::new();
    }
    let symbolizer = Symbolizer::new(elf, root);
    let mut out = String::new();
    for t in &traces {
        let _ = writeln!(out, "  backtrace (CPU {}):", t.cpu);
        let chains: Vec<Vec<Symbol>> = t
            .frames
            .iter()
            .map(|f| match &symbolizer {
                Ok(s) => s.lookup(f.lookup_addr()),
                Err(_) => Vec::new(),
            })
            .collect();
        let outer = |chain: &[Symbol]| chain.last().and_then(|s| s.function.clone());
        let mut shown = 0;
        for (i, (f, chain)) in t.frames.iter().zip(&chains).enumerate() {
            if f.kind == AddrKind::Lr {
                if symbolizer.is_err() {
                    let _ = writeln!(out, "    lr {:#018x}", f.addr);
                    continue;
                }
                {
                    // Kept only when it adds a caller the chain skipped.
                    let next = t.frames.get(i + 1).map(|n| n.addr);
                    let first = chains.first().and_then(|c| outer(c));
                    if outer(chain).is_none() || outer(chain) == first || next == Some(f.addr) {
                        continue;
                    }
                    print_frame(&mut out, shown, f.addr, chain, true, " (link register)");
                    shown += 1;
                    continue;
                }
            }
            if i == 0 {
                if let Err(why) = &symbolizer {
                    let _ = writeln!(out, "    (not symbolised: {why})");
                }
            }
            print_frame(&mut out, shown, f.addr, chain, symbolizer.is_ok(), "");
            shown += 1;
        }
        if let Some(end) = &t.end {
            let _ = writeln!(out, "    (walk ended: {end})");
        }
    }
    out
}

/// One frame of the report: its number and address, then its inline chain.
fn print_frame(
    out: &mut String,
    n: usize,
    addr: u64,
    chain: &[Symbol],
    looked_up: bool,
    note: &str,
) {
    let head = format!("    #{n} {addr:#018x}");
    if chain.is_empty() {
        let unknown = if looked_up { " ??" } else { "" };
        let _ = writeln!(out, "{head}{unknown}{note}");
        return;
    }
    for (i, sym) in chain.iter().enumerate() {
        let name = sym.function.as_deref().unwrap_or("??");
        let at = sym
            .location
            .as_deref()
            .map(|l| format!(" at {l}"))
            .unwrap_or_default();
        if i == 0 {
            let _ = writeln!(out, "{head} {name}{at}{note}");
        } else {
            let pad = " ".repeat(head.len());
            let _ = writeln!(out, "{pad} inlined into {name}{at}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    #[test]
    fn frames_and_end_lines_parse() {
        let console = lines(
            "# PANIC on CPU 2: boom\n\
             # backtrace: cpu=2 #0 pc=0x000000000008d83a\n\
             # backtrace: cpu=2 #1 ra=0x0000000000065718\n\
             # backtrace: cpu=2 end (null frame pointer)\n\
             quiesce: status=fail (panic on CPU 2)",
        );
        let t = parse(&console);
        assert_eq!(
            t,
            [Backtrace {
                cpu: 2,
                frames: vec![
                    RawFrame {
                        index: 0,
                        kind: AddrKind::Pc,
                        addr: 0x8d83a
                    },
                    RawFrame {
                        index: 1,
                        kind: AddrKind::Ra,
                        addr: 0x65718
                    },
                ],
                end: Some("null frame pointer".into()),
            }]
        );
        assert_eq!(t[0].frames[0].lookup_addr(), 0x8d83a);
        assert_eq!(t[0].frames[1].lookup_addr(), 0x65717);
        // The link register follows frame 0 and is looked up as a return.
        let t = parse(&lines(
            "# backtrace: cpu=0 #0 pc=0x100\n\
             # backtrace: cpu=0 lr=0x204\n\
             # backtrace: cpu=0 #1 ra=0x308",
        ));
        let kinds: Vec<_> = t[0]
            .frames
            .iter()
            .map(|f| (f.kind, f.lookup_addr()))
            .collect();
        assert_eq!(
            kinds,
            [
                (AddrKind::Pc, 0x100),
                (AddrKind::Lr, 0x203),
                (AddrKind::Ra, 0x307)
            ]
        );
        // Without a trace to belong to, it is dropped.
        assert_eq!(parse(&lines("# backtrace: cpu=0 lr=0x204")), []);
    }

    #[test]
    fn interleaved_cpus_and_repeated_traces_stay_apart() {
        let console = lines(
            "# backtrace: cpu=1 #0 ra=0x10\n\
             # backtrace: cpu=3 #0 pc=0x30\n\
             # backtrace: cpu=1 #1 ra=0x11\n\
             # backtrace: cpu=3 #1 ra=0x31\n\
             # backtrace: cpu=3 end (depth limit 32)\n\
             # backtrace: cpu=1 #0 ra=0x20",
        );
        let t = parse(&console);
        assert_eq!(t.len(), 3);
        assert_eq!(
            (t[0].cpu, t[0].frames.len(), t[0].end.as_deref()),
            (1, 2, None)
        );
        assert_eq!(
            (t[1].cpu, t[1].frames.len(), t[1].end.as_deref()),
            (3, 2, Some("depth limit 32"))
        );
        assert_eq!((t[2].cpu, t[2].frames[0].addr), (1, 0x20));
    }

    #[test]
    fn malformed_lines_are_ignored() {
        for bad in [
            "# backtrace: #0 pc=0x10",
            "# backtrace: cpu=x #0 pc=0x10",
            "# backtrace: cpu=1 #0 sp=0x10",
            "# backtrace: cpu=1 #0 pc=10",
            "# backtrace: cpu=1 #z pc=0x10",
            "# backtrace: cpu=1 #0 pc=0xzz",
            "backtrace: cpu=1 #0 pc=0x10",
        ] {
            assert_eq!(parse(&lines(bad)), [], "{bad}");
        }
        // An end line without an open trace changes nothing.
        assert_eq!(parse(&lines("# backtrace: cpu=1 end (x)")), []);
        // Indented lines (echoed by a test) still count.
        assert_eq!(parse(&lines("    # backtrace: cpu=0 #0 ra=0x1")).len(), 1);
    }

    #[test]
    fn a_missing_elf_keeps_the_addresses_and_says_why() {
        let console = lines(
            "# backtrace: cpu=0 #0 pc=0x1234\n\
             # backtrace: cpu=0 lr=0x5678\n\
             # backtrace: cpu=0 end (x)",
        );
        let r = report(&console, Path::new("/nonexistent/kernel"), Path::new("/"));
        assert!(r.contains("backtrace (CPU 0):"), "{r}");
        assert!(
            r.contains("not symbolised: no kernel ELF at /nonexistent/kernel"),
            "{r}"
        );
        assert!(r.contains("#0 0x0000000000001234"), "{r}");
        assert!(r.contains("lr 0x0000000000005678"), "{r}");
        assert_eq!(
            r.lines().filter(|l| l.contains("not symbolised")).count(),
            1
        );
        // Not an ELF at all.
        let junk = std::env::temp_dir().join(format!("quiesce-not-elf-{}", std::process::id()));
        std::fs::write(&junk, b"not an ELF").unwrap();
        let r = report(&console, &junk, Path::new("/"));
        std::fs::remove_file(&junk).unwrap();
        assert!(
            r.contains("not symbolised: cannot read the kernel ELF"),
            "{r}"
        );
        assert!(r.contains("#0 0x0000000000001234"), "{r}");
        assert_eq!(report(&lines("no trace here"), &junk, Path::new("/")), "");
    }
}
