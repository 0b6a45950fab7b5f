//! The load balancers' health checks (Patroni's paths and semantics), as pure functions of what
//! this member knows: the committed state, its PostgreSQL as the agent last saw it, its lease.
//!
//! | path | 200 when |
//! |---|---|
//! | `/primary`, `/read-write`, `/` | the committed state names this member primary, it holds the lease for the current epoch, and its PostgreSQL runs and is not in recovery |
//! | `/replica` | PostgreSQL runs in recovery on a member that is not the primary; `?lag=`, `?tag_k=v`, `?replication_state=streaming` narrow it |
//! | `/read-only` | `/primary` or `/replica` (the filters apply to the replica case) |
//! | `/sync`, `/async` | `/replica`, and in (not in) the committed synchronous standby set |
//! | `/health` | PostgreSQL runs |
//! | `/liveness` | the daemon's loops went round recently |
//! | `/readiness` | `/primary`, or a streaming replica within `?lag=` (default `maximum_lag_on_failover`) |
//!
//! A fenced member (no lease, or needing a rejoin), a paused one whose PostgreSQL is down, and a
//! primary cut off from the quorum (its lease runs out) never answer 200 to `/primary`.

use vigil_core::{ClusterState, MemberKind, PgStatus};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Primary,
    Replica,
    ReadOnly,
    Sync,
    Async,
    Health,
    Liveness,
    Readiness,
}

/// What this member knows, gathered by the HTTP handler.
pub struct Local<'a> {
    pub me: &'a str,
    pub kind: MemberKind,
    pub state: &'a ClusterState,
    pub pg: &'a PgStatus,
    /// This member holds the primary lease for `state.epoch`.
    pub lease_valid: bool,
    /// The primary's WAL position as last heard from the coordinator.
    pub primary_lsn: Option<u64>,
    /// This member's configured tags.
    pub tags: &'a vigil_core::Tags,
    pub loops_alive: bool,
    /// A coordinator (Raft leader) is known: for a witness, the sign it is a working voter.
    pub hears_coordinator: bool,
    /// `maximum_lag_on_failover`: the default lag bound of `/readiness`.
    pub max_lag_default: u64,
}

/// The query parameters of a health check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// `?lag=`: the most WAL (bytes) a replica may be behind the primary.
    pub max_lag: Option<u64>,
    /// `?tag_<key>=<value>`.
    pub tags: Vec<(String, String)>,
    /// `?replication_state=streaming`.
    pub streaming: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub reason: String,
}

fn yes(reason: impl Into<String>) -> Verdict {
    Verdict { ok: true, reason: reason.into() }
}

fn no(reason: impl Into<String>) -> Verdict {
    Verdict { ok: false, reason: reason.into() }
}

/// A size like PostgreSQL's settings: bytes, or a number with `B`, `kB`, `MB`, `GB`, `TB`
/// (powers of 1024, units case-insensitive).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a size (write e.g. 1048576, 16MB, 1GB)"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        "tb" => 1 << 40,
        other => return Err(format!("unknown unit {other:?} in {text:?} (B, kB, MB, GB, TB)")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("{text:?} is too large"))
}

/// The filters of a query string's pairs; unknown parameters are ignored (as Patroni does).
pub fn parse_filters(query: &[(String, String)]) -> Result<Filters, String> {
    let mut f = Filters::default();
    for (k, v) in query {
        if k == "lag" {
            f.max_lag = Some(parse_size(v).map_err(|e| format!("lag: {e}"))?);
        } else if let Some(tag) = k.strip_prefix("tag_") {
            f.tags.push((tag.to_string(), v.clone()));
        } else if k == "replication_state" {
            if v != "streaming" {
                return Err(format!("replication_state: only \"streaming\" is known, not {v:?}"));
            }
            f.streaming = true;
        }
    }
    Ok(f)
}

impl Local<'_> {
    /// The primary may write: committed primary, lease held, PostgreSQL running and writable.
    pub fn primary(&self) -> Verdict {
        if self.kind != MemberKind::Postgres {
            return no("a witness runs no PostgreSQL");
        }
        let epoch = self.state.epoch;
        match self.state.primary.as_deref() {
            None => return no("no primary is committed yet"),
            Some(p) if p != self.me => return no(format!("{p} is the primary at epoch {epoch}")),
            Some(_) => {}
        }
        if !self.lease_valid {
            return no(format!("fenced: no lease for epoch {epoch}"));
        }
        if self.pg.needs_rejoin {
            return no("fenced: needs a rejoin");
        }
        if !self.pg.running {
            return no("PostgreSQL is not running");
        }
        if self.pg.in_recovery {
            return no("PostgreSQL is still in recovery (being promoted)");
        }
        yes(format!("primary at epoch {epoch}"))
    }

    /// Bytes of WAL this member is behind the primary's last known position.
    pub fn lag(&self) -> Option<u64> {
        let p = self.primary_lsn.filter(|p| *p > 0)?;
        let mine = self.pg.received_lsn.max(self.pg.replay_lsn);
        Some(p.saturating_sub(mine))
    }

    /// Kept from writing: the committed primary without its lease, or a member needing a rejoin.
    pub fn fenced(&self) -> bool {
        self.pg.needs_rejoin || (self.state.is_primary(self.me) && !self.lease_valid)
    }

    fn tags_match(&self, wanted: &[(String, String)]) -> Result<(), String> {
        let Some((k, v)) = wanted.iter().find(|(k, v)| !self.tags.matches(k, v)) else {
            return Ok(());
        };
        let known = vigil_core::tags::KNOWN.iter().any(|(name, _)| name == k);
        Err(match self.tags.get(k) {
            None if !known => format!("tag {k} is not defined here"),
            // An unset flag is false, an unset priority 0.
            None => format!("tag {k} is not set here, so it is not {v}"),
            Some(mine) => format!("tag {k} is {mine}, not {v}"),
        })
    }

    pub fn replica(&self, f: &Filters) -> Verdict {
        if self.kind != MemberKind::Postgres {
            return no("a witness runs no PostgreSQL");
        }
        if self.state.is_primary(self.me) {
            return no("this member is the primary");
        }
        if self.pg.needs_rejoin {
            return no("needs a rejoin");
        }
        if !self.pg.running || !self.pg.in_recovery {
            return no(if self.pg.running { "PostgreSQL is not in recovery" } else { "PostgreSQL is not running" });
        }
        if f.streaming && !self.pg.streaming {
            return no("not streaming from the primary");
        }
        if let Err(e) = self.tags_match(&f.tags) {
            return no(e);
        }
        if let Some(max) = f.max_lag {
            match self.lag() {
                None => return no("lag unknown: no primary position heard from the coordinator"),
                Some(lag) if lag > max => return no(format!("{lag} bytes behind the primary (limit {max})")),
                Some(_) => {}
            }
        }
        yes(match self.lag() {
            Some(lag) => format!("replica, {lag} bytes behind the primary"),
            None => "replica".to_string(),
        })
    }

    pub fn check(&self, check: Check, f: &Filters) -> Verdict {
        match check {
            Check::Primary => self.primary(),
            Check::Replica => self.replica(f),
            Check::ReadOnly => {
                let p = self.primary();
                if p.ok {
                    p
                } else {
                    self.replica(f)
                }
            }
            Check::Sync | Check::Async => {
                let r = self.replica(f);
                let in_set = self.state.sync.standbys.contains(self.me);
                match (r.ok, check == Check::Sync, in_set) {
                    (false, _, _) => r,
                    (true, true, true) => yes("synchronous standby"),
                    (true, true, false) => no("not a synchronous standby"),
                    (true, false, false) => yes("asynchronous standby"),
                    (true, false, true) => no("a synchronous standby"),
                }
            }
            // A witness runs no PostgreSQL: it is healthy (and ready) while it votes, that is,
            // its loops go round and it hears a coordinator. Generic monitoring then sees 200.
            Check::Health | Check::Readiness if self.kind == MemberKind::Witness => {
                if self.loops_alive && self.hears_coordinator {
                    yes("a voting witness that hears the coordinator")
                } else if self.loops_alive {
                    no("a witness that hears no coordinator")
                } else {
                    no("the daemon's loops are stuck")
                }
            }
            Check::Health => {
                if self.pg.running {
                    yes("PostgreSQL is running")
                } else {
                    no("PostgreSQL is not running")
                }
            }
            Check::Liveness => {
                if self.loops_alive {
                    yes("the daemon's loops are running")
                } else {
                    no("the daemon's loops are stuck")
                }
            }
            Check::Readiness => {
                let p = self.primary();
                if p.ok {
                    return p;
                }
                let f = Filters {
                    max_lag: Some(f.max_lag.unwrap_or(self.max_lag_default)),
                    streaming: true,
                    tags: Vec::new(),
                };
                self.replica(&f)
            }
        }
    }

    /// The role shown in answers and metrics.
    pub fn role(&self) -> &'static str {
        if self.kind == MemberKind::Witness {
            "witness"
        } else if self.state.is_primary(self.me) {
            "primary"
        } else if self.state.primary.is_some() {
            "replica"
        } else {
            "uninitialized"
        }
    }

    /// The state shown in answers (as in `pgvigil list`).
    pub fn pg_state(&self) -> &'static str {
        let pg = self.pg;
        if self.kind == MemberKind::Witness {
            "voting"
        } else if pg.needs_rejoin {
            "needs rejoin"
        } else if !pg.running {
            "stopped"
        } else if pg.in_recovery && pg.streaming {
            "streaming"
        } else if pg.in_recovery {
            "in recovery"
        } else {
            "running"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_core::{Command, DataDir, Member};

    fn cluster() -> ClusterState {
        let mut s = ClusterState::default();
        for n in ["a", "b", "c"] {
            let m = Member { kind: MemberKind::Postgres, pg_host: "h".into(), pg_port: 1, ..Default::default() };
            s.apply(&Command::UpsertMember { name: n.into(), member: m, at_unix_ms: 0 }).ok();
        }
        s.apply(&Command::Bootstrap { member: "a".into(), at_unix_ms: 0 }).ok();
        s.sync.standbys.insert("b".into());
        s
    }

    fn primary_pg() -> PgStatus {
        PgStatus { running: true, current_lsn: 1000, data_dir: DataDir::Primary, ..Default::default() }
    }

    fn standby_pg(lsn: u64) -> PgStatus {
        PgStatus {
            running: true,
            in_recovery: true,
            streaming: true,
            received_lsn: lsn,
            replay_lsn: lsn,
            data_dir: DataDir::Standby,
            ..Default::default()
        }
    }

    static TAGS: std::sync::LazyLock<vigil_core::Tags> = std::sync::LazyLock::new(vigil_core::Tags::new);

    fn local<'a>(me: &'a str, s: &'a ClusterState, pg: &'a PgStatus, lease: bool) -> Local<'a> {
        Local {
            me,
            kind: MemberKind::Postgres,
            state: s,
            pg,
            lease_valid: lease,
            primary_lsn: Some(100_000),
            tags: &TAGS,
            loops_alive: true,
            hears_coordinator: true,
            max_lag_default: 1 << 20,
        }
    }

    fn q(pairs: &[(&str, &str)]) -> Filters {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse_filters(&pairs).expect("good query")
    }

    fn oks(l: &Local<'_>, f: &Filters) -> Vec<Check> {
        use Check::*;
        [Primary, Replica, ReadOnly, Sync, Async, Health, Liveness, Readiness]
            .into_iter()
            .filter(|c| l.check(*c, f).ok)
            .collect()
    }

    #[test]
    fn the_primary_with_its_lease_answers_primary_only_while_it_may_write() {
        use Check::*;
        let s = cluster();
        let pg = primary_pg();
        let f = Filters::default();
        assert_eq!(oks(&local("a", &s, &pg, true), &f), vec![Primary, ReadOnly, Health, Liveness, Readiness]);
        // No lease (fenced, or cut off from the quorum): never /primary.
        let l = local("a", &s, &pg, false);
        assert!(!l.primary().ok && l.fenced());
        assert!(l.primary().reason.contains("fenced"));
        // Paused and down.
        let mut paused = s.clone();
        paused.paused = true;
        let down = PgStatus { running: false, ..primary_pg() };
        assert_eq!(oks(&local("a", &paused, &down, true), &f), vec![Liveness]);
        // Still in recovery while being promoted; needing a rejoin.
        let promoting = PgStatus { in_recovery: true, ..primary_pg() };
        assert!(!local("a", &s, &promoting, true).primary().ok);
        let rejoin = PgStatus { needs_rejoin: true, ..primary_pg() };
        assert!(!local("a", &s, &rejoin, true).primary().ok);
        // Another member's view: it is not the primary, whatever its PostgreSQL says.
        assert!(!local("b", &s, &pg, true).primary().ok);
    }

    #[test]
    fn replicas_sync_async_and_lag() {
        use Check::*;
        let s = cluster();
        let (b, c) = (standby_pg(100_000), standby_pg(100_000 - 4096));
        let f = Filters::default();
        assert_eq!(oks(&local("b", &s, &b, false), &f), vec![Replica, ReadOnly, Sync, Health, Liveness, Readiness]);
        assert_eq!(oks(&local("c", &s, &c, false), &f), vec![Replica, ReadOnly, Async, Health, Liveness, Readiness]);
        assert_eq!(local("c", &s, &c, false).lag(), Some(4096));
        assert!(local("c", &s, &c, false).replica(&q(&[("lag", "4kB")])).ok);
        let v = local("c", &s, &c, false).replica(&q(&[("lag", "4095")]));
        assert!(!v.ok && v.reason.contains("4096 bytes behind"), "{v:?}");
        // Unknown primary position: a lag bound cannot be met.
        let mut l = local("c", &s, &c, false);
        l.primary_lsn = None;
        assert!(l.replica(&Filters::default()).ok && !l.replica(&q(&[("lag", "1GB")])).ok);
        // Not streaming: still a replica (as Patroni), unless asked for streaming; never ready.
        let detached = PgStatus { streaming: false, ..standby_pg(1000) };
        let l = local("b", &s, &detached, false);
        assert!(l.replica(&f).ok && !l.replica(&q(&[("replication_state", "streaming")])).ok);
        assert!(!l.check(Readiness, &f).ok);
        // Stopped.
        let stopped = PgStatus { running: false, ..standby_pg(1000) };
        assert_eq!(oks(&local("b", &s, &stopped, false), &f), vec![Liveness]);
        // Readiness bound defaults to maximum_lag_on_failover.
        let far = standby_pg(0);
        let mut l = local("c", &s, &far, false);
        l.primary_lsn = Some(2 << 20);
        assert!(!l.check(Readiness, &f).ok && l.check(Readiness, &q(&[("lag", "4MB")])).ok);
    }

    #[test]
    fn tags_match_as_patroni_does() {
        let s = cluster();
        let pg = standby_pg(1000);
        let tags = vigil_core::Tags::new().with("nofailover", true).with("priority", 3).with("zone", "b");
        let mut l = local("b", &s, &pg, false);
        l.tags = &tags;
        assert!(l.replica(&q(&[("tag_nofailover", "True"), ("tag_priority", "3")])).ok);
        assert!(!l.replica(&q(&[("tag_nofailover", "false")])).ok);
        assert!(!l.replica(&q(&[("tag_datacenter", "east")])).ok, "an undefined tag does not match");
        // Any tag of the config, not only the ones pgvigil's rules read.
        assert!(l.replica(&q(&[("tag_zone", "B")])).ok);
        let no = l.replica(&q(&[("tag_zone", "c")]));
        assert!(!no.ok && no.reason.contains("tag zone is b, not c"), "{}", no.reason);
        // An unset flag is false.
        assert!(l.replica(&q(&[("tag_noloadbalance", "false")])).ok);
        // The primary checks ignore tags.
        let p = primary_pg();
        let mut l = local("a", &s, &p, true);
        l.tags = &tags;
        assert!(l.check(Check::Primary, &q(&[("tag_nofailover", "false")])).ok);
    }

    #[test]
    fn witnesses_and_stuck_loops() {
        let s = cluster();
        let pg = PgStatus::default();
        let mut l = local("w", &s, &pg, false);
        l.kind = MemberKind::Witness;
        let voting = vec![Check::Health, Check::Liveness, Check::Readiness];
        assert_eq!(oks(&l, &Filters::default()), voting, "a voting witness is healthy and ready");
        l.hears_coordinator = false;
        assert_eq!(oks(&l, &Filters::default()), vec![Check::Liveness], "no coordinator: alive only");
        l.hears_coordinator = true;
        l.loops_alive = false;
        assert!(oks(&l, &Filters::default()).is_empty());
        assert_eq!((l.role(), l.pg_state()), ("witness", "voting"));
    }

    #[test]
    fn sizes_and_bad_queries() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("16MB"), Ok(16 << 20));
        assert_eq!(parse_size("1024kB"), Ok(1 << 20));
        assert_eq!(parse_size("1 gb"), Ok(1 << 30));
        assert!(parse_size("MB").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999TB").is_err());
        let bad = [("lag".to_string(), "lots".to_string())];
        assert!(parse_filters(&bad).is_err_and(|e| e.starts_with("lag:")));
        assert_eq!(q(&[("foo", "bar")]), Filters::default(), "unknown parameters are ignored");
    }
}
