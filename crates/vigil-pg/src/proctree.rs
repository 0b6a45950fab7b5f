//! Killing a process and everything below it, also when it is stopped (SIGSTOP) or hung in the kernel.
//!
//! PostgreSQL's children call `setsid()`, so a process group does not hold them: the tree is found by
//! parent pid in `/proc`. SIGKILL is the only signal a stopped process cannot postpone: it dies
//! without running again, so a frozen backend cannot commit after the fence.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Every live process's parent, from `/proc/<pid>/stat`.
fn parents() -> HashMap<i32, i32> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // "pid (comm) S ppid ...": comm may hold spaces and ')', so split after the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("X");
        if state == "Z" || state == "X" {
            continue;
        }
        if let Some(ppid) = fields.next().and_then(|p| p.parse().ok()) {
            out.insert(pid, ppid);
        }
    }
    out
}

/// The live descendants of `root` (not `root` itself).
pub fn descendants(root: i32) -> BTreeSet<i32> {
    let parents = parents();
    let mut found = BTreeSet::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (&child, &parent) in &parents {
            if parent == p && found.insert(child) {
                frontier.push(child);
            }
        }
    }
    found
}

/// SIGKILL `roots` (those > 0) and all their descendants, and then the descendants of `also_below`
/// (a subreaper that inherits the orphans, itself spared), until none is left or `within` passes.
/// The tree is collected *before* each round of signals, so a parent killed first cannot hide its
/// children (they are re-parented to the subreaper and found in the next round). Returns how many
/// processes were signalled.
pub fn kill_tree(roots: &[i32], also_below: Option<i32>, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let mut signalled = 0;
    loop {
        let mut targets: BTreeSet<i32> = BTreeSet::new();
        for &r in roots.iter().filter(|r| **r > 0) {
            if alive(r) {
                targets.insert(r);
            }
            targets.extend(descendants(r));
        }
        if let Some(s) = also_below {
            targets.extend(descendants(s));
        }
        if targets.is_empty() {
            return signalled;
        }
        for &p in &targets {
            if kill(Pid::from_raw(p), Signal::SIGKILL).is_ok() {
                signalled += 1;
            }
        }
        if Instant::now() >= deadline {
            return signalled;
        }
        // The kernel needs a moment to turn them into zombies; their parents reap them.
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Alive and not a zombie.
pub fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(_) => return false,
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn kills_a_stopped_tree_including_grandchildren() {
        // sh -> sleep (child) and sh -> sh -> sleep (grandchild); then stop them all.
        let mut child =
            Command::new("sh").arg("-c").arg("sleep 300 & sh -c 'sleep 300 & wait' & wait").spawn().expect("spawn sh");
        let root = child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(10);
        while descendants(root).len() < 3 {
            assert!(Instant::now() < deadline, "tree did not appear");
            std::thread::sleep(Duration::from_millis(10));
        }
        let tree = descendants(root);
        for p in tree.iter().chain([&root]) {
            let _ = kill(Pid::from_raw(*p), Signal::SIGSTOP);
        }
        let n = kill_tree(&[root], None, Duration::from_secs(5));
        assert!(n >= 4, "signalled {n}");
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Orphans are re-parented to init, which reaps them.
        while tree.iter().any(|p| alive(*p)) {
            assert!(Instant::now() < deadline, "descendants survived: {tree:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
