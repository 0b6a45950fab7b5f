//! systemd's notification protocol (`sd_notify`), for `Type=notify` with `WatchdogSec=`.
//!
//! - `READY=1` once the configuration is valid, the Raft storage is open and the API listens (not
//!   after PostgreSQL's recovery: the agent goes on with that).
//! - `STATUS=` (role, epoch, lease, PostgreSQL) whenever that text changes, checked every loop
//!   interval.
//! - `WATCHDOG=1` at least every quarter of `WATCHDOG_USEC`, only while the reporter and the
//!   coordinator loops go round (`Liveness`), and only when `WATCHDOG_PID` is unset or ours.
//! - `STOPPING=1` when shutdown starts, then `EXTEND_TIMEOUT_USEC=` every few seconds (bounded)
//!   while the stop goes on.
//!
//! `main` calls [`take_environment`] first of all: `NOTIFY_SOCKET`, `WATCHDOG_USEC` and
//! `WATCHDOG_PID` are read and removed from the process environment, so PostgreSQL (Debian builds
//! it with systemd support: it would send its own `READY=1`), hooks and every other program the
//! daemon runs never see them. Datagrams go out on a non-blocking `UnixDatagram` to a path or an
//! abstract socket (`@name`); a failed send is logged once until one succeeds again.

use crate::daemon::Shared;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use vigil_core::{ClusterState, MemberKind, PgStatus};

/// How often `EXTEND_TIMEOUT_USEC` is sent during a stop, by how much it extends, and for how long
/// at most (the daemon's own shutdown deadlines end well before).
const EXTEND_EVERY: Duration = Duration::from_secs(5);
const EXTEND_BY: Duration = Duration::from_secs(15);
const EXTEND_AT_MOST: Duration = Duration::from_secs(120);

/// What the service manager told this process, read once at start.
#[derive(Debug, Default)]
struct Env {
    socket: Option<String>,
    watchdog: Option<Duration>,
}

static ENV: OnceLock<Env> = OnceLock::new();

/// Read `NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID` and remove them from the environment.
/// Call it at the very start of `main`, before the runtime or any other thread starts.
pub fn take_environment() {
    let socket = std::env::var("NOTIFY_SOCKET").ok().filter(|s| !s.is_empty());
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    for key in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        std::env::remove_var(key);
    }
    let watchdog = watchdog_interval(usec.as_deref(), pid.as_deref(), std::process::id());
    let _ = ENV.set(Env { socket, watchdog });
}

/// The watchdog timeout systemd expects pings within: `WATCHDOG_USEC` when it is a positive
/// number and `WATCHDOG_PID` is unset or `me`.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if pid.is_some_and(|p| p.trim().parse::<u32>().ok() != Some(me)) {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec))
}

/// The socket address of `NOTIFY_SOCKET`: a path, or an abstract name when it starts with '@'.
pub fn socket_address(spec: &str) -> std::io::Result<SocketAddr> {
    match spec.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None if spec.starts_with('/') => SocketAddr::from_pathname(spec),
        None => Err(std::io::Error::other(format!("unsupported NOTIFY_SOCKET {spec:?} (not a path or @name)"))),
    }
}

struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// The last send failed (logged once until one succeeds).
    failing: AtomicBool,
}

/// The notifier, when `NOTIFY_SOCKET` was set and usable (a problem with it is logged once).
fn notifier() -> Option<&'static Notifier> {
    static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();
    NOTIFIER
        .get_or_init(|| {
            let spec = ENV.get()?.socket.as_deref()?;
            let made = socket_address(spec).and_then(|addr| {
                let socket = UnixDatagram::unbound()?;
                socket.set_nonblocking(true)?;
                Ok(Notifier { socket, addr, failing: AtomicBool::new(false) })
            });
            match made {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::error!("NOTIFY_SOCKET {spec:?} unusable, no systemd notifications: {e}");
                    None
                }
            }
        })
        .as_ref()
}

/// Send `lines` (`KEY=value`, one per line) in one datagram; false if nothing was sent.
pub fn send(lines: &[String]) -> bool {
    let Some(n) = notifier().filter(|_| !lines.is_empty()) else { return false };
    match n.socket.send_to_addr(lines.join("\n").as_bytes(), &n.addr) {
        Ok(_) => {
            if n.failing.swap(false, Ordering::Relaxed) {
                tracing::info!("systemd notifications are delivered again");
            }
            true
        }
        Err(e) => {
            if !n.failing.swap(true, Ordering::Relaxed) {
                tracing::warn!("systemd notification not delivered: {e}");
            }
            false
        }
    }
}

/// The `STATUS=` text: role, epoch, lease and PostgreSQL state (no timers, so it changes only
/// when one of those does).
pub fn status_text(me: &str, kind: MemberKind, state: &ClusterState, lease: bool, pg: &PgStatus) -> String {
    let role = match kind {
        MemberKind::Witness => "witness",
        _ if state.is_primary(me) => "primary",
        _ if state.primary.is_none() => "no primary yet",
        _ => "replica",
    };
    let mut parts = vec![role.to_string(), format!("epoch {}", state.epoch)];
    if state.paused {
        parts.push("paused".into());
    }
    if kind == MemberKind::Postgres {
        parts.push(if lease { "lease held" } else { "no lease" }.into());
        let pg_state = match (pg.running, pg.in_recovery, pg.streaming) {
            _ if pg.needs_rejoin => "PostgreSQL needs rejoin",
            (false, _, _) => "PostgreSQL down",
            (true, false, _) => "PostgreSQL writable",
            (true, true, true) => "PostgreSQL streaming",
            (true, true, false) => "PostgreSQL in recovery",
        };
        parts.push(pg_state.into());
    }
    parts.join(", ")
}

fn status_now(shared: &Shared) -> String {
    let state = shared.committed();
    let lease = shared.lease_valid(state.epoch, Instant::now());
    let pg = shared.pg_status.borrow().clone();
    status_text(shared.name(), shared.settings.raw.kind, &state, lease, &pg)
}

/// How often the task looks: every loop interval, and at least four times per watchdog timeout.
pub fn period(loop_interval: Duration, watchdog: Option<Duration>) -> Duration {
    watchdog.map_or(loop_interval, |w| loop_interval.min(w / 4)).max(Duration::from_millis(10))
}

/// Tell the service manager we are ready, then keep STATUS and the watchdog until `shutdown`;
/// then STOPPING and, for a while, EXTEND_TIMEOUT_USEC. Nothing to do without `NOTIFY_SOCKET`.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    if notifier().is_none() {
        return;
    }
    let watchdog = ENV.get().and_then(|e| e.watchdog);
    let t = &shared.settings.timings;
    // The loops go round every loop interval; a report or a proposal may take a lease timeout.
    let within = t.lease_timeout * 3;
    let mut status = status_now(&shared);
    send(&["READY=1".into(), format!("STATUS={status}")]);
    tracing::info!(watchdog = ?watchdog, "told systemd: ready");
    let mut tick = vigil_raft::beat::interval(period(t.loop_interval, watchdog));
    let mut stalled = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let mut lines = Vec::new();
        let now = status_now(&shared);
        if now != status {
            status = now;
            lines.push(format!("STATUS={status}"));
        }
        if watchdog.is_some() {
            let alive = shared.alive.alive(Instant::now(), within);
            if alive {
                lines.push("WATCHDOG=1".into());
            }
            if alive == stalled {
                stalled = !alive;
                if stalled {
                    tracing::error!("the daemon's loops stalled: no watchdog pings to systemd");
                } else {
                    tracing::info!("the daemon's loops go round again: watchdog pings resume");
                }
            }
        }
        send(&lines);
    }
    send(&["STOPPING=1".into(), "STATUS=stopping".into()]);
    // The stop is bounded by the daemon's own deadlines; tell systemd it is going on.
    let started = Instant::now();
    while started.elapsed() < EXTEND_AT_MOST {
        let mut lines = vec![format!("EXTEND_TIMEOUT_USEC={}", EXTEND_BY.as_micros())];
        if watchdog.is_some() {
            lines.push("WATCHDOG=1".into());
        }
        send(&lines);
        tokio::time::sleep(watchdog.map_or(EXTEND_EVERY, |w| EXTEND_EVERY.min(w / 4))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_only_for_us_and_only_when_positive() {
        let s = Some(Duration::from_secs(2));
        assert_eq!(watchdog_interval(Some("2000000"), None, 7), s);
        assert_eq!(watchdog_interval(Some("2000000"), Some("7"), 7), s);
        assert_eq!(watchdog_interval(Some("2000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("2000000"), Some("x"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, Some("7"), 7), None);
    }

    #[test]
    fn socket_addresses() {
        use std::os::linux::net::SocketAddrExt as _;
        let a = socket_address("@pgvigil/notify").expect("abstract");
        assert_eq!(a.as_abstract_name(), Some(&b"pgvigil/notify"[..]));
        let p = socket_address("/run/systemd/notify").expect("path");
        assert_eq!(p.as_pathname(), Some(std::path::Path::new("/run/systemd/notify")));
        assert!(socket_address("vsock:2:1234").is_err());
    }

    #[test]
    fn period_fits_the_watchdog() {
        let ms = Duration::from_millis;
        assert_eq!(period(ms(250), None), ms(250));
        assert_eq!(period(ms(250), Some(ms(2000))), ms(250));
        assert_eq!(period(ms(500), Some(ms(1000))), ms(250));
    }

    #[test]
    fn status_names_role_epoch_lease_and_postgres() {
        let mut state = ClusterState::default();
        let mut pg = PgStatus::default();
        assert_eq!(
            status_text("a", MemberKind::Postgres, &state, false, &pg),
            "no primary yet, epoch 0, no lease, PostgreSQL down"
        );
        state.primary = Some("a".into());
        state.epoch = 3;
        pg.running = true;
        assert_eq!(
            status_text("a", MemberKind::Postgres, &state, true, &pg),
            "primary, epoch 3, lease held, PostgreSQL writable"
        );
        pg.in_recovery = true;
        pg.streaming = true;
        state.paused = true;
        assert_eq!(
            status_text("b", MemberKind::Postgres, &state, false, &pg),
            "replica, epoch 3, paused, no lease, PostgreSQL streaming"
        );
        assert_eq!(status_text("w", MemberKind::Witness, &state, false, &pg), "witness, epoch 3, paused");
    }
}
