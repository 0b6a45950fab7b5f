//! The [`Postgres`] handle: one member's settings and its postmaster child. Its methods are spread
//! over the modules named in the crate's layout, one concern each.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::process::{poll_child, ChildState, Fencer};
use crate::settings::PgSettings;

pub struct Postgres {
    settings: PgSettings,
    /// The postmaster we started (spawned on the dedicated spawner thread, see `process`).
    pub(crate) child: Option<Child>,
    pub(crate) fencer: Fencer,
}

impl Postgres {
    /// Relative paths in `settings` are made absolute against the current directory now, because
    /// PostgreSQL programs run from `/`.
    pub fn new(mut settings: PgSettings) -> Self {
        for path in [&mut settings.bin_dir, &mut settings.data_dir, &mut settings.socket_dir, &mut settings.log_file] {
            *path = absolute(path);
        }
        Postgres { settings, child: None, fencer: Fencer::default() }
    }

    pub fn settings(&self) -> &PgSettings {
        &self.settings
    }

    /// A cheap handle that can kill the postmaster from any task.
    pub fn fencer(&self) -> Fencer {
        self.fencer.clone()
    }

    /// Our postmaster child exists and has not exited.
    pub fn is_running_child(&mut self) -> bool {
        matches!(self.child_state(), ChildState::Running)
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Dropping the handle means nobody manages this server any more: shut it down immediately, as the
/// parent-death signal would if the daemon died, so no unmanaged primary stays writable. Blocks for
/// the few milliseconds an immediate shutdown takes (bounded).
impl Drop for Postgres {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if !matches!(poll_child(&mut child, &self.fencer), Ok(None)) {
            return;
        }
        tracing::warn!(member = %self.settings.member, pid = child.id(), "Postgres handle dropped with the postmaster running: immediate shutdown");
        self.fencer.fence_now();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut killed = false;
        while let Ok(None) = poll_child(&mut child, &self.fencer) {
            if !killed && Instant::now() >= deadline {
                let _ = child.kill();
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
