//! The readable record of one run: faults, commits, PostgreSQL role changes, decisions. Only kept
//! when asked (a failing seed is run again with the trace on), so the fast path formats nothing.

#[derive(Debug, Default)]
pub struct Trace {
    on: bool,
    lines: Vec<String>,
}

impl Trace {
    pub fn new(on: bool) -> Self {
        Trace { on, lines: Vec::new() }
    }

    /// Record a line at virtual time `now_ms`; `line` is only called when the trace is on.
    pub fn note(&mut self, now_ms: u64, line: impl FnOnce() -> String) {
        if self.on {
            self.lines.push(format!("{:>6}.{:03}s  {}", now_ms / 1000, now_ms % 1000, line()));
        }
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }
}
