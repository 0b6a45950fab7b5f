//! Hosts as Linux network namespaces, for the fault-injection suite (needs root, `ip`, `nft`).
//!
//! One [`Net`] is one private network:
//!
//! ```text
//!   <id>-pg1 (eth0 10.a.b.11) --veth-- p-pg1 ┐
//!   <id>-pg2 (eth0 10.a.b.12) --veth-- p-pg2 ├ br0 in <id>-sw (the switch: no address)
//!   <id>-pg3 (eth0 10.a.b.13) --veth-- p-pg3 │
//!   <id>-c   (eth0 10.a.b.2)  --veth-- p-c   ┘  the client: writer and checker live here
//! ```
//!
//! `<id>` is `pvf-<pid>-<counter>`. The bridge sits in a namespace of its own, so nothing is added
//! to the root namespace (no route, no address, and the root's iptables/br_netfilter never see the
//! traffic); two suites in parallel have separate switches and cannot meet even with the same /24.
//! The /24 (`10.a.b.0`) is still chosen at random among those not used by the root namespace or by
//! other `pvf-` namespaces, so addresses in logs are unambiguous.
//!
//! Faults act on this network: [`Net::set_link`] takes a host's switch port down or up (the cable
//! pulled at the switch), [`Net::cut`] drops every packet between two hosts with nftables rules in
//! both hosts (a silent partition of one path), [`Net::signal_all`] signals every process of a host.
//!
//! Clean-up: dropping a `Net` kills every process in its namespaces and deletes them (the veths and
//! the bridge go with them), also when a test panics. Namespaces left by a process that no longer
//! exists (a crashed or interrupted run) are removed by [`clean_stale`], which `Net::new` calls.

use anyhow::Context;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Every namespace this suite creates starts with this.
pub const PREFIX: &str = "pvf-";
/// The client namespace's address is `<subnet>.2`; host `i` (0-based) is `<subnet>.(11 + i)`.
const CLIENT_OCTET: u8 = 2;
const FIRST_HOST_OCTET: u8 = 11;

static COUNTER: AtomicU32 = AtomicU32::new(0);

#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    /// The namespace's name (`ip netns exec <ns> ...`).
    pub ns: String,
    /// Its one address (on `eth0`).
    pub ip: String,
    /// Its port on the switch (an interface in the switch namespace).
    port: String,
}

pub struct Net {
    /// `pvf-<pid>-<counter>`: the prefix of every namespace of this network.
    pub id: String,
    /// `10.a.b`
    pub subnet: String,
    pub hosts: Vec<Host>,
    pub client: Host,
    switch: String,
    /// Namespaces created so far (deleted on drop, in reverse order).
    created: Vec<String>,
}

/// Run `ip` (or any program) and fail with its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {program} (is iproute2/nftables installed?)"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args)
}

/// Run `nft -f -` with `script` on stdin inside namespace `ns`.
fn nft_script(ns: &str, script: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run nft (apt-get install nftables)")?;
    child.stdin.take().context("nft stdin")?.write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "nft in {ns}: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// The names of every network namespace.
fn namespaces() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The pids of every process in namespace `ns` (never this process).
pub fn pids(ns: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    ip(&["netns", "pids", ns])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|p| *p != me)
        .collect()
}

fn kill(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// SIGKILL every process in `ns` (until none is left, at most `wait`), then delete it.
fn destroy(ns: &str, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let left = pids(ns);
        if left.is_empty() || Instant::now() >= deadline {
            break;
        }
        for p in left {
            // A stopped process dies of SIGKILL too; SIGCONT anyway so nothing lingers half-frozen.
            kill(p, nix::sys::signal::Signal::SIGKILL);
            kill(p, nix::sys::signal::Signal::SIGCONT);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Err(e) = ip(&["netns", "del", ns]) {
        eprintln!("netns: could not delete {ns}: {e:#}");
    }
}

/// Remove the namespaces (and their processes) and the data directories of earlier runs whose
/// process is gone. Returns the namespaces removed.
pub fn clean_stale() -> Vec<String> {
    // Only names that carry a pid are ours; anything else counts as alive (left alone).
    let alive = |pid: &str| pid.parse::<u32>().map_or(true, |p| std::path::Path::new(&format!("/proc/{p}")).exists());
    let mut removed = Vec::new();
    for ns in namespaces() {
        let Some(rest) = ns.strip_prefix(PREFIX) else { continue };
        let pid = rest.split('-').next().unwrap_or("");
        if !alive(pid) {
            destroy(&ns, Duration::from_secs(5));
            removed.push(ns);
        }
    }
    // Data directories: `<tmp>/pgvigil-faults-<pid>-...` (see `NsCluster`).
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix("pgvigil-faults-") {
                if !alive(rest.split('-').next().unwrap_or("")) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    removed
}

/// The `10.a.b` prefixes in use by the root namespace and by other suites' namespaces.
fn used_subnets() -> Vec<String> {
    let mut texts = vec![ip(&["-o", "-4", "addr"]).unwrap_or_default(), ip(&["-4", "route"]).unwrap_or_default()];
    for ns in namespaces().iter().filter(|n| n.starts_with(PREFIX)) {
        texts.push(ip(&["-n", ns, "-o", "-4", "addr"]).unwrap_or_default());
    }
    let mut used = Vec::new();
    for t in texts {
        for word in t.split_whitespace() {
            let mut parts = word.split(['.', '/']);
            if let (Some("10"), Some(a), Some(b)) = (parts.next(), parts.next(), parts.next()) {
                used.push(format!("10.{a}.{b}"));
            }
        }
        // 10.0.0.0/8 routed in the root namespace: every 10.x is taken.
        if t.contains("10.0.0.0/8") {
            used.push("10/8".into());
        }
    }
    used
}

/// A free `10.a.b` (a in 64..=250). The choice is random (pid, counter, clock) but has no
/// influence on any schedule.
fn pick_subnet(seed: u64) -> anyhow::Result<String> {
    let used = used_subnets();
    anyhow::ensure!(!used.iter().any(|u| u == "10/8"), "10.0.0.0/8 is routed here; cannot pick a private /24");
    let mut x = seed | 1;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let cand = format!("10.{}.{}", 64 + x % 187, (x >> 8) % 256);
        if !used.contains(&cand) {
            return Ok(cand);
        }
    }
    anyhow::bail!("no free 10.x.y.0/24 found")
}

impl Net {
    /// A private network with one namespace per name in `hosts`, a client namespace and a switch.
    pub fn new(hosts: &[&str]) -> anyhow::Result<Net> {
        anyhow::ensure!(nix::unistd::geteuid().is_root(), "network namespaces need root");
        anyhow::ensure!(hosts.len() <= 200, "too many hosts");
        clean_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{PREFIX}{}-{n}", std::process::id());
        let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let subnet = pick_subnet((clock as u64) ^ (u64::from(std::process::id()) << 32) ^ u64::from(n))?;
        let host = |name: &str, octet: u8| Host {
            name: name.to_string(),
            ns: format!("{id}-{name}"),
            ip: format!("{subnet}.{octet}"),
            port: format!("p-{name}"),
        };
        let mut net = Net {
            client: host("c", CLIENT_OCTET),
            hosts: hosts.iter().enumerate().map(|(i, h)| host(h, FIRST_HOST_OCTET + i as u8)).collect(),
            switch: format!("{id}-sw"),
            subnet,
            id,
            created: Vec::new(),
        };
        for h in &net.hosts {
            anyhow::ensure!(h.port.len() <= 15, "host name {:?} too long for an interface name", h.name);
        }
        net.build().with_context(|| format!("build network {}", net.id))?;
        Ok(net)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let sw = self.switch.clone();
        self.add_ns(&sw)?;
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        let all: Vec<Host> = std::iter::once(self.client.clone()).chain(self.hosts.iter().cloned()).collect();
        for h in &all {
            self.add_ns(&h.ns)?;
            ip(&["-n", &h.ns, "link", "set", "lo", "up"])?;
            // Created directly in the two namespaces: the names never appear in the root namespace.
            ip(&["link", "add", "eth0", "netns", &h.ns, "type", "veth", "peer", "name", &h.port, "netns", &sw])?;
            ip(&["-n", &h.ns, "addr", "add", &format!("{}/24", h.ip), "dev", "eth0"])?;
            ip(&["-n", &h.ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &sw, "link", "set", &h.port, "master", "br0"])?;
            ip(&["-n", &sw, "link", "set", &h.port, "up"])?;
        }
        Ok(())
    }

    fn add_ns(&mut self, ns: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", ns])?;
        self.created.push(ns.to_string());
        Ok(())
    }

    pub fn host(&self, name: &str) -> anyhow::Result<&Host> {
        self.hosts.iter().find(|h| h.name == name).with_context(|| format!("no host {name}"))
    }

    /// The words that start a program inside `host`'s namespace.
    pub fn launcher(&self, host: &str) -> anyhow::Result<Vec<String>> {
        Ok(vec!["ip".into(), "netns".into(), "exec".into(), self.host(host)?.ns.clone()])
    }

    /// Take `host`'s switch port down (isolated: nothing in or out) or up again.
    pub fn set_link(&self, host: &str, up: bool) -> anyhow::Result<()> {
        let h = self.host(host)?;
        ip(&["-n", &self.switch, "link", "set", &h.port, if up { "up" } else { "down" }])?;
        Ok(())
    }

    /// Drop every packet between `a` and `b` (both directions, rules in both hosts), silently:
    /// connections hang, as on a broken path. Other paths are untouched.
    pub fn cut(&self, a: &str, b: &str) -> anyhow::Result<()> {
        let (ha, hb) = (self.host(a)?, self.host(b)?);
        for (me, peer) in [(ha, hb), (hb, ha)] {
            let script = format!(
                "table inet vigil_cut_{name} {{\n\
                 \x20 chain input {{ type filter hook input priority 0; policy accept; ip saddr {ip} drop; }}\n\
                 \x20 chain output {{ type filter hook output priority 0; policy accept; ip daddr {ip} drop; }}\n\
                 }}\n",
                name = peer.name,
                ip = peer.ip
            );
            nft_script(&me.ns, &script)?;
        }
        Ok(())
    }

    /// Undo [`Net::cut`].
    pub fn uncut(&self, a: &str, b: &str) -> anyhow::Result<()> {
        let (ha, hb) = (self.host(a)?, self.host(b)?);
        for (me, peer) in [(ha, hb), (hb, ha)] {
            let table = format!("vigil_cut_{}", peer.name);
            run("ip", &["netns", "exec", &me.ns, "nft", "delete", "table", "inet", &table])?;
        }
        Ok(())
    }

    /// Send `sig` to every process in `host`'s namespace. Repeats until a round finds no process
    /// it has not signalled (a postmaster may fork while we go), at most five rounds.
    pub fn signal_all(&self, host: &str, sig: nix::sys::signal::Signal) -> anyhow::Result<usize> {
        let ns = &self.host(host)?.ns;
        let mut done = std::collections::BTreeSet::new();
        for _ in 0..5 {
            let new: Vec<i32> = pids(ns).into_iter().filter(|p| !done.contains(p)).collect();
            if new.is_empty() {
                break;
            }
            for p in new {
                kill(p, sig);
                done.insert(p);
            }
        }
        Ok(done.len())
    }

    /// Run `f` on a new thread inside `host`'s namespace (every socket it opens, from a runtime it
    /// builds too, comes from that host: a client on the host's side of a cut).
    pub fn spawn_in<T, F>(&self, host: &str, f: F) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce() -> anyhow::Result<T> + Send + 'static,
    {
        let ns = self.host(host)?.ns.clone();
        let path = format!("/run/netns/{ns}");
        Ok(std::thread::spawn(move || {
            let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {ns}"))?;
            f()
        }))
    }

    /// Build a tokio runtime whose threads live in the client namespace: every socket its tasks
    /// open (the writer's, the checker's, the gRPC views) comes from the client's address.
    pub fn client_runtime(&self) -> anyhow::Result<tokio::runtime::Runtime> {
        let ns = self.client.ns.clone();
        let path = format!("/run/netns/{ns}");
        let want = std::fs::metadata(&path).with_context(|| format!("stat {path}"))?.ino();
        // setns changes only the calling thread; threads it creates (tokio's workers and blocking
        // pool, spawned from the runtime's threads) inherit the namespace.
        let rt = std::thread::spawn(move || -> anyhow::Result<tokio::runtime::Runtime> {
            let f = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {ns}"))?;
            Ok(tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("vigil-client")
                .enable_all()
                .build()?)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the runtime thread panicked"))??;
        let got = rt.block_on(rt.spawn(async { current_netns() }))??;
        anyhow::ensure!(got == want, "client runtime threads are not in the client namespace");
        Ok(rt)
    }
}

/// The inode of the calling thread's network namespace.
pub fn current_netns() -> anyhow::Result<u64> {
    let link = std::fs::read_link("/proc/thread-self/ns/net")?;
    let text = link.to_string_lossy();
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    Ok(digits.parse()?)
}

impl Drop for Net {
    fn drop(&mut self) {
        // Hosts and the client first (their processes), the switch last.
        for ns in self.created.iter().rev() {
            destroy(ns, Duration::from_secs(10));
        }
    }
}
