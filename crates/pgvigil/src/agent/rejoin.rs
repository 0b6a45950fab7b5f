//! Bringing this member back as a standby: the divergence check of a standby that stopped
//! streaming, the rejoin of an old primary (pg_rewind, else a re-clone), `pgvigil reinit`, and the
//! clone itself (from the backup repository or with `pg_basebackup`).

use super::*;

impl Agent {
    /// A standby that has not streamed for a while: ask the primary for its timeline history and
    /// see whether this member's WAL forked off it (then it must be rewound, not just re-pointed).
    pub(super) async fn check_divergence(&mut self, state: &vigil_core::ClusterState, obs: &Observation, now: Instant) {
        let me = self.shared.name();
        let standby = obs.running && obs.in_recovery && !state.is_primary(me);
        if !standby || obs.streaming {
            self.not_streaming_since = None;
            if obs.streaming {
                self.diverged = None;
            }
            return;
        }
        let since = *self.not_streaming_since.get_or_insert(now);
        let due = self.divergence_checked.is_none_or(|t| now - t >= DIVERGENCE_CHECK_AFTER);
        if now - since < DIVERGENCE_CHECK_AFTER || !due {
            return;
        }
        self.divergence_checked = Some(now);
        let Some(m) = state.primary.as_deref().and_then(|p| state.members.get(p)) else { return };
        let upstream = Upstream { host: m.pg_host.clone(), port: m.pg_port };
        match self.pg.timeline_history(&upstream).await {
            Ok((primary_tli, history)) => {
                let lsn = obs.received_lsn.max(obs.replay_lsn);
                self.diverged = divergence(obs.timeline, lsn, primary_tli, &history);
                if let Some(d) = &self.diverged {
                    tracing::warn!(member = %me, "cannot follow the primary: {d}");
                }
            }
            Err(e) => tracing::debug!("timeline check against the primary: {e:#}"),
        }
    }

    /// Make this data directory a standby of `from` again: `pg_rewind`; if that fails, move the
    /// data directory aside (never deleted here) and clone. The outcome goes into the history.
    pub(super) async fn rejoin(&mut self, from: &Upstream, slot: &str, reason: &str, epoch: u64) -> anyhow::Result<()> {
        // Nothing is touched unless the new primary is there to rewind or clone from.
        self.pg.timeline_history(from).await.context("rejoin: the primary is not ready")?;
        if self.pg.is_running_child() {
            self.pg.stop(StopMode::Immediate).await.context("rejoin: stop PostgreSQL")?;
        }
        let started = Instant::now();
        let started_unix_ms = wall_ms();
        // With archiving on, WAL the old primary no longer has comes from the archive, through
        // the restore_command the member's PostgreSQL gets for standbys.
        let restore_command = self.shared.settings.backup.as_ref().and_then(|_| {
            let params = &self.pg.settings().start_parameters;
            params.iter().find(|(k, v)| k == "restore_command" && !v.is_empty()).map(|(_, v)| v.clone())
        });
        tracing::warn!(
            epoch,
            %reason,
            restore_target_wal = restore_command.is_some(),
            "rejoining: rewinding from {}:{}",
            from.host,
            from.port
        );
        let (method, detail) = match self.pg.rewind_from(from, slot, restore_command.as_deref()).await {
            Ok(()) if restore_command.is_some() => (
                RejoinMethod::Rewind,
                format!("{reason}; pg_rewind --restore-target-wal: WAL the old primary lacks comes from the archive"),
            ),
            Ok(()) => (RejoinMethod::Rewind, reason.to_string()),
            Err(rewind_err) => {
                tracing::warn!(epoch, "pg_rewind failed, re-cloning instead: {rewind_err:#}");
                let moved = self.pg.move_aside().context("rejoin: move the data directory aside")?;
                let keep = self.shared.settings.raw.postgres.as_ref().map_or(2, |p| p.keep_moved_data_dirs) as usize;
                if let Err(e) = vigil_pg::datadir::prune_moved(&self.pg.settings().data_dir, keep) {
                    tracing::warn!("pruning old moved-aside data directories: {e:#}");
                }
                let cloned = self.clone_member(from, slot).await;
                let detail = format!(
                    "{reason}; pg_rewind failed ({}); old data moved to {}{}",
                    first_line(&format!("{rewind_err:#}")),
                    moved.display(),
                    cloned.as_ref().map(|how| format!("; cloned {how}")).unwrap_or_default()
                );
                if let Err(e) = cloned {
                    self.last_rejoin = Some(RejoinRecord {
                        started_unix_ms,
                        method: RejoinMethod::Reclone,
                        ok: false,
                        took_ms: started.elapsed().as_millis() as u64,
                        detail: format!("{detail}; clone failed: {}", first_line(&format!("{e:#}"))),
                        reinit: None,
                    });
                    return Err(e.context("rejoin: clone"));
                }
                (RejoinMethod::Reclone, detail)
            }
        };
        let took_ms = started.elapsed().as_millis() as u64;
        tracing::warn!(epoch, ?method, took_ms, "rejoined as a standby of {}:{}", from.host, from.port);
        self.last_rejoin = Some(RejoinRecord { started_unix_ms, method, ok: true, took_ms, detail, reinit: None });
        self.diverged = None;
        self.not_streaming_since = None;
        self.remember(|m| {
            m.primary_epoch = None;
            m.switchover_stop = None;
            m.upstream = Some(from.clone());
        })
    }

    /// An operator's reinit request: stop, move the data directory aside (never deleted here),
    /// clone again. Acted on once (`reinit_done` is remembered once the data is moved aside); the
    /// outcome goes into the history as a re-clone.
    pub(super) async fn reinit(&mut self, from: &Upstream, slot: &str, id: u64, epoch: u64) -> anyhow::Result<()> {
        // Nothing is touched unless the primary is there to clone from.
        self.pg.timeline_history(from).await.context("reinit: the primary is not ready")?;
        let started = Instant::now();
        let started_unix_ms = wall_ms();
        tracing::warn!(
            epoch,
            id,
            "re-initialising on request: moving the data directory aside, cloning from {}:{}",
            from.host,
            from.port
        );
        self.pg.stop(StopMode::Fast).await.context("reinit: stop PostgreSQL")?;
        let moved = match self.pg.data_dir_state() {
            vigil_pg::DataDirState::Empty => None,
            _ => Some(self.pg.move_aside().context("reinit: move the data directory aside")?),
        };
        let keep = self.shared.settings.raw.postgres.as_ref().map_or(2, |p| p.keep_moved_data_dirs) as usize;
        if let Err(e) = vigil_pg::datadir::prune_moved(&self.pg.settings().data_dir, keep) {
            tracing::warn!("pruning old moved-aside data directories: {e:#}");
        }
        self.remember(|m| {
            m.reinit_done = Some(id);
            m.primary_epoch = None;
            m.switchover_stop = None;
            m.upstream = None;
        })?;
        let cloned = self.clone_member(from, slot).await;
        let mut detail = format!("reinit {id} requested by the operator");
        if let Some(moved) = &moved {
            detail.push_str(&format!("; old data moved to {}", moved.display()));
        }
        if let Ok(how) = &cloned {
            detail.push_str(&format!("; cloned {how}"));
        }
        if let Err(e) = &cloned {
            detail.push_str(&format!("; clone failed: {}", first_line(&format!("{e:#}"))));
        }
        let took_ms = started.elapsed().as_millis() as u64;
        self.last_rejoin = Some(RejoinRecord {
            started_unix_ms,
            method: RejoinMethod::Reclone,
            ok: cloned.is_ok(),
            took_ms,
            detail,
            reinit: Some(id),
        });
        cloned.context("reinit: clone")?;
        tracing::warn!(epoch, id, took_ms, "re-initialised: cloned from {}:{}", from.host, from.port);
        self.diverged = None;
        self.not_streaming_since = None;
        self.remember(|m| m.upstream = Some(from.clone()))
    }
}

impl Agent {
    /// Fill the empty data directory as a standby of `up`: from the backup repository when
    /// `backup.clone_from_repo` is on and a recent backup succeeded, else (or when that fails)
    /// with `pg_basebackup`. Says how.
    pub(super) async fn clone_member(&mut self, up: &vigil_pg::Upstream, slot: &str) -> anyhow::Result<String> {
        if let Some(b) = self.shared.settings.backup.as_ref().filter(|b| b.raw.clone_from_repo) {
            let state = self.shared.committed();
            match crate::backup::clone::from_repository(&self.shared.settings, b, &self.pg, &state, up, slot).await {
                Ok(label) => return Ok(format!("from the repository ({label})")),
                Err(e) => {
                    let why = format!("{e:#}");
                    tracing::warn!("not created from the repository, cloning with pg_basebackup: {why}");
                    self.pg.clone_from(up, slot).await.context("clone with pg_basebackup")?;
                    return Ok(format!("with pg_basebackup (not from the repository: {})", first_line(&why)));
                }
            }
        }
        self.pg.clone_from(up, slot).await.context("clone with pg_basebackup")?;
        Ok("with pg_basebackup".into())
    }
}

/// An error in one line for the history: its first line, and when a tool's output follows (`pg_rewind
/// failed (exit status: 1):` and then what pg_rewind printed), the last line of that output, where
/// the tools say why.
fn first_line(s: &str) -> String {
    let mut lines = s.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default();
    match lines.next_back() {
        Some(why) if first.ends_with(':') => format!("{first} {why}"),
        _ => first.to_string(),
    }
}

#[cfg(test)]
mod first_line_tests {
    use super::first_line;

    #[test]
    fn a_tools_failure_keeps_its_reason() {
        let err =
            "pg_rewind failed (exit status: 1):\npg_rewind: servers diverged\n\npg_rewind: error: could not find WAL\n";
        assert_eq!(first_line(err), "pg_rewind failed (exit status: 1): pg_rewind: error: could not find WAL");
        assert_eq!(first_line("clone: no space left\ncaused by: x"), "clone: no space left");
        assert_eq!(first_line("failed (exit status: 1):"), "failed (exit status: 1):");
        assert_eq!(first_line(""), "");
    }
}
