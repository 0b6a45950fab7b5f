//! The [`Postgres`] handle: one member's settings and its postmaster (under a keeper). Its methods
//! are spread over the modules named in the crate's layout, one concern each.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{ChildState, Fencer};
use crate::settings::PgSettings;

pub struct Postgres {
    settings: PgSettings,
    /// The keeper we started, reaped once it exits (an adopted keeper is not our child).
    pub(crate) keeper_child: Option<tokio::process::Child>,
    pub(crate) fencer: Fencer,
    /// Kill the server when the handle is dropped (the default); the daemon turns it off, because
    /// the keeper holds the server across a restart of the daemon.
    kill_on_drop: bool,
    /// The connection `observe` keeps between checks (see `observe.rs`).
    pub(crate) observer: Option<crate::observe::Observer>,
}

impl Postgres {
    /// Relative paths in `settings` are made absolute against the current directory now, because
    /// PostgreSQL programs run from `/`.
    pub fn new(mut settings: PgSettings) -> Self {
        for path in [
            &mut settings.bin_dir,
            &mut settings.data_dir,
            &mut settings.socket_dir,
            &mut settings.log_file,
            &mut settings.keeper.socket,
        ] {
            *path = absolute(path);
        }
        let fencer = Postgres::new_fencer(&settings);
        Postgres { settings, keeper_child: None, fencer, kill_on_drop: true, observer: None }
    }

    /// Leave the server running when this handle is dropped (its keeper enforces the lease).
    pub fn leave_running_on_drop(&mut self) {
        self.kill_on_drop = false;
    }

    pub fn settings(&self) -> &PgSettings {
        &self.settings
    }

    /// A cheap handle that can kill the postmaster from any task.
    pub fn fencer(&self) -> Fencer {
        self.fencer.clone()
    }

    /// Our postmaster (started or adopted) exists and has not exited.
    pub fn is_running_child(&mut self) -> bool {
        matches!(self.child_state(), ChildState::Running)
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Dropping a handle that still kills on drop (tests, tools) kills its server: SIGKILL to every
/// process of it, bounded, so nothing is left running unmanaged.
impl Drop for Postgres {
    fn drop(&mut self) {
        if !self.kill_on_drop || self.fencer.pid().is_none() {
            return;
        }
        tracing::warn!(member = %self.settings.member, pid = self.fencer.pid(), "Postgres handle dropped with the postmaster running: killing it");
        self.fencer.fence_now();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.fencer.keeper_pid().is_some() && std::time::Instant::now() < deadline {
            if let Some(k) = self.keeper_child.as_mut() {
                let _ = k.try_wait();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
