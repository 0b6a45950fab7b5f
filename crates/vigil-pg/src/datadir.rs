//! The data directory on disk: what it holds, creating directories and files with the server's owner,
//! and moving a data directory aside (we never delete one).

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context as _;

use crate::error::PgError;
use crate::postgres::Postgres;
use crate::settings::RunAs;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataDirState {
    /// Missing or an empty directory.
    Empty,
    /// A PostgreSQL data directory (`PG_VERSION` and `global/pg_control`) without `standby.signal`.
    Primary,
    /// A PostgreSQL data directory with `standby.signal`.
    Standby,
    /// Anything else, and what was found: not ours to initialise over, clone into or start. A
    /// mount point holding only `lost+found` is one: `initdb` and `pg_basebackup` refuse a
    /// non-empty directory, and PostgreSQL's documentation asks for a subdirectory of the mount.
    Foreign(String),
}

impl DataDirState {
    /// The core's name for it (what a report carries), and what was found in a foreign one.
    pub fn split(self) -> (vigil_core::DataDir, Option<String>) {
        use vigil_core::DataDir;
        match self {
            DataDirState::Empty => (DataDir::Empty, None),
            DataDirState::Primary => (DataDir::Primary, None),
            DataDirState::Standby => (DataDir::Standby, None),
            DataDirState::Foreign(found) => (DataDir::Foreign, Some(found)),
        }
    }
}

/// How many names a [`DataDirState::Foreign`] description lists.
const NAMES_SHOWN: usize = 5;

/// Runs blocking file IO (an fsync, a rename, listing or removing a directory) so that it holds
/// up no other task: on the daemon's multi-threaded runtime the worker first hands its other tasks
/// to another thread (`block_in_place`), so a slow or stuck disk stalls only the task that waits
/// for it. Elsewhere (a current-thread runtime in tests, the keeper, the CLI) it just runs.
pub fn off_runtime<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// What `dir` holds.
pub fn data_dir_state(dir: &Path) -> DataDirState {
    off_runtime(|| state_of(dir))
}

fn state_of(dir: &Path) -> DataDirState {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return DataDirState::Empty,
        Err(e) => return DataDirState::Foreign(format!("{} cannot be listed: {e}", dir.display())),
        Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
    };
    if names.is_empty() {
        return DataDirState::Empty;
    }
    if names == ["lost+found"] {
        return DataDirState::Foreign(format!(
            "{} holds only lost+found: it is the root of a file system (a mount point), which initdb \
             refuses; set postgres.data_dir to a subdirectory of it, e.g. {}",
            dir.display(),
            dir.join("pgdata").display()
        ));
    }
    if dir.join("PG_VERSION").is_file() && dir.join("global").join("pg_control").is_file() {
        return if dir.join("standby.signal").exists() { DataDirState::Standby } else { DataDirState::Primary };
    }
    names.sort();
    let shown = names.iter().take(NAMES_SHOWN).cloned().collect::<Vec<_>>().join(", ");
    let more = if names.len() > NAMES_SHOWN { format!(", ... ({} entries)", names.len()) } else { String::new() };
    DataDirState::Foreign(format!(
        "{} is not empty and not a PostgreSQL data directory (no PG_VERSION and global/pg_control); \
         found: {shown}{more}",
        dir.display()
    ))
}

/// Ok if `dir` is missing or empty, else [`PgError::DataDirNotEmpty`].
pub fn ensure_empty(dir: &Path) -> anyhow::Result<()> {
    match data_dir_state(dir) {
        DataDirState::Empty => Ok(()),
        _ => Err(PgError::DataDirNotEmpty(dir.to_path_buf()).into()),
    }
}

/// chown `path` to `run_as` (no-op when we are not root).
pub fn chown(path: &Path, run_as: Option<RunAs>) -> anyhow::Result<()> {
    if let Some(r) = run_as {
        nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(r.uid)), Some(nix::unistd::Gid::from_raw(r.gid)))
            .with_context(|| format!("chown {} to {}:{}", path.display(), r.uid, r.gid))?;
    }
    Ok(())
}

/// Create `dir` (and missing parents, left root-owned and world-traversable) with `mode`, owned by
/// `run_as`. An existing directory gets the mode and owner too.
pub fn create_dir_owned(dir: &Path, mode: u32, run_as: Option<RunAs>) -> anyhow::Result<()> {
    off_runtime(|| create_owned(dir, mode, run_as))
}

fn create_owned(dir: &Path, mode: u32, run_as: Option<RunAs>) -> anyhow::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("create directory {}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(e).with_context(|| format!("create directory {}", dir.display())),
    }
    // The umask may have narrowed the mode; PostgreSQL insists on exactly 0700 (or 0750) for data.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {} {mode:o}", dir.display()))?;
    chown(dir, run_as)
}

/// Replace `path` atomically with `contents` (temp file, fsync, rename, fsync of the directory).
pub fn write_file_atomic(path: &Path, contents: &[u8], mode: u32, run_as: Option<RunAs>) -> anyhow::Result<()> {
    off_runtime(|| write_atomic(path, contents, mode, run_as))
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32, run_as: Option<RunAs>) -> anyhow::Result<()> {
    let tmp = sibling(path, ".pgvigil-tmp");
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(contents).with_context(|| format!("write {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("fsync {}", tmp.display()))?;
        chown(&tmp, run_as)?;
        std::fs::rename(&tmp, path).with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
        fsync_dir_of(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Append `contents` to an existing file.
pub fn append_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    off_runtime(|| {
        let mut f =
            std::fs::OpenOptions::new().append(true).open(path).with_context(|| format!("open {}", path.display()))?;
        f.write_all(contents).with_context(|| format!("append to {}", path.display()))?;
        f.sync_all().with_context(|| format!("fsync {}", path.display()))
    })
}

/// fsync the directory holding `path`, so a rename in it survives a crash.
pub fn fsync_parent(path: &Path) -> anyhow::Result<()> {
    off_runtime(|| fsync_dir_of(path))
}

fn fsync_dir_of(path: &Path) -> anyhow::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => fsync_dir(p),
        _ => fsync_dir(Path::new(".")),
    }
}

/// fsync a directory, so renames in it survive a crash.
fn fsync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("fsync directory {}", dir.display()))
}

/// Marks the complete WAL segments of the newest timeline in `pg_wal` that a standby received
/// (archive status `.done`: with `archive_mode = on` a standby archives nothing and marks what it
/// receives done) as ready, so that once it is promoted its archiver pushes them. The old
/// primary may have died before it archived them, which would leave a hole in the archive that
/// no later backup covers. Segments the archive holds already are found identical there and
/// skipped by pgBackRest. Returns how many were marked. Call it while PostgreSQL is in recovery
/// and no more WAL arrives (the old primary is fenced), just before the promotion.
pub fn mark_received_wal_ready(data_dir: &Path) -> anyhow::Result<usize> {
    off_runtime(|| {
        let status = data_dir.join("pg_wal/archive_status");
        let names: Vec<String> = std::fs::read_dir(&status)
            .with_context(|| format!("list {}", status.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .collect();
        let segment =
            |n: &String, suffix: &str| n.strip_suffix(suffix).filter(|s| is_segment_name(s)).map(String::from);
        // The timeline is the first 8 hex digits; segments of older timelines were the previous
        // promotion's to push.
        let newest = names
            .iter()
            .filter_map(|n| segment(n, ".done").or_else(|| segment(n, ".ready")))
            .map(|n| n[..8].to_string())
            .max();
        let Some(newest) = newest else { return Ok(0) };
        let done: Vec<String> = names.iter().filter_map(|n| segment(n, ".done")).collect();
        let mut marked = 0;
        for n in done.iter().filter(|n| n.starts_with(&newest)) {
            let (from, to) = (status.join(format!("{n}.done")), status.join(format!("{n}.ready")));
            std::fs::rename(&from, &to).with_context(|| format!("rename {} to {}", from.display(), to.display()))?;
            marked += 1;
        }
        if marked > 0 {
            fsync_dir(&status)?;
        }
        Ok(marked)
    })
}

/// A complete WAL segment's file name: 24 hex digits (not `.partial`, `.history`, `.backup`).
fn is_segment_name(n: &str) -> bool {
    n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `path` with `suffix` appended to its last component (`/a/data` → `/a/data.suffix`).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `YYYYmmddTHHMMSS` in UTC (no time-zone database needed, and names sort in time order).
pub fn utc_timestamp(t: SystemTime) -> String {
    let rfc3339 = humantime::format_rfc3339_seconds(t).to_string();
    rfc3339.chars().filter(|c| !matches!(c, '-' | ':' | 'Z')).collect()
}

impl Postgres {
    pub fn data_dir_state(&self) -> DataDirState {
        data_dir_state(&self.settings().data_dir)
    }

    /// [`Self::data_dir_state`] on the calling thread, for a server that has just answered: it
    /// holds the directory open, so the listing and three `stat`s come from the kernel's caches.
    /// Handing them to another thread four times a second was a third of an idle daemon's
    /// context switches; a disk that hangs anyway stalls only this daemon, whose keeper fences
    /// on the lease by itself.
    pub fn data_dir_state_of_a_running_server(&self) -> DataDirState {
        state_of(&self.settings().data_dir)
    }

    /// The precondition of offline changes (standby configuration, rewind): a cluster exists in
    /// the data directory and no postmaster runs on it.
    pub(crate) fn require_stopped_cluster(&self) -> anyhow::Result<()> {
        let data_dir = &self.settings().data_dir;
        if crate::process::live_postmaster(data_dir).is_some() {
            return Err(PgError::Running(data_dir.clone()).into());
        }
        anyhow::ensure!(
            data_dir.join("PG_VERSION").exists(),
            "no cluster in {} (PG_VERSION missing)",
            data_dir.display()
        );
        Ok(())
    }

    /// Rename the data directory to `<data_dir>.old-<YYYYmmddTHHMMSS>` (UTC; `-1`, `-2`, ... appended if
    /// that name is taken) and return the new path. Never deletes anything. Refuses while a postmaster
    /// runs on it.
    pub fn move_aside(&self) -> anyhow::Result<PathBuf> {
        let data_dir = &self.settings().data_dir;
        if self.fencer().pid().is_some() || crate::process::live_postmaster(data_dir).is_some() {
            return Err(PgError::Running(data_dir.clone()).into());
        }
        anyhow::ensure!(data_dir.exists(), "data directory {} does not exist", data_dir.display());
        let base = sibling(data_dir, &format!(".old-{}", utc_timestamp(SystemTime::now())));
        let mut target = base.clone();
        let mut n = 0;
        while target.exists() {
            n += 1;
            target = sibling(&base, &format!("-{n}"));
        }
        off_runtime(|| {
            std::fs::rename(data_dir, &target)
                .with_context(|| format!("rename {} to {}", data_dir.display(), target.display()))?;
            fsync_dir_of(&target)
        })?;
        tracing::info!(from = %data_dir.display(), to = %target.display(), "moved data directory aside");
        Ok(target)
    }
}

/// Remove all but the newest `keep` data directories that [`Postgres::move_aside`] made next to
/// `data_dir` (their names sort by time). Returns the removed paths.
pub fn prune_moved(data_dir: &Path, keep: usize) -> anyhow::Result<Vec<PathBuf>> {
    // Removing a whole data directory can take a while.
    off_runtime(|| prune(data_dir, keep))
}

fn prune(data_dir: &Path, keep: usize) -> anyhow::Result<Vec<PathBuf>> {
    let (Some(parent), Some(name)) = (data_dir.parent(), data_dir.file_name()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{}.old-", name.to_string_lossy());
    let mut moved: Vec<PathBuf> = std::fs::read_dir(parent)
        .with_context(|| format!("list {}", parent.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    moved.sort_by_key(|p| moved_key(p));
    let excess = moved.len().saturating_sub(keep);
    let removed: Vec<PathBuf> = moved.into_iter().take(excess).collect();
    for p in &removed {
        std::fs::remove_dir_all(p).with_context(|| format!("remove {}", p.display()))?;
        tracing::info!(path = %p.display(), "removed an old moved-aside data directory");
    }
    Ok(removed)
}

/// Sort key of a moved directory: its timestamp, then the `-N` suffix as a number.
fn moved_key(p: &Path) -> (String, u32) {
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stamp_at = name.rfind(".old-").map_or(0, |i| i + 5);
    let rest = &name[stamp_at..];
    match rest.split_once('-') {
        Some((stamp, n)) => (stamp.to_string(), n.parse().unwrap_or(0)),
        None => (rest.to_string(), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "19700101T000000");
        // 2024-02-29 12:34:56 UTC
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(utc_timestamp(t), "20240229T123456");
        // 2000-03-01 00:00:00 UTC
        let t = UNIX_EPOCH + Duration::from_secs(951_868_800);
        assert_eq!(utc_timestamp(t), "20000301T000000");
    }

    #[test]
    fn received_segments_of_the_newest_timeline_are_marked_ready() {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = dir.path().join("pg_wal/archive_status");
        std::fs::create_dir_all(&status).expect("mkdir");
        let names = [
            "000000020000000000000007.done",
            "000000020000000000000008.done",
            "000000020000000000000006.ready",
            "000000010000000000000005.done",
            "000000020000000000000009.partial.done",
            "00000002.history.done",
        ];
        for n in names {
            std::fs::write(status.join(n), "").expect("write");
        }
        assert_eq!(mark_received_wal_ready(dir.path()).expect("marks"), 2);
        let mut now: Vec<String> = std::fs::read_dir(&status)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        now.sort();
        assert_eq!(
            now,
            [
                "000000010000000000000005.done",
                "00000002.history.done",
                "000000020000000000000006.ready",
                "000000020000000000000007.ready",
                "000000020000000000000008.ready",
                "000000020000000000000009.partial.done",
            ]
        );
        assert_eq!(mark_received_wal_ready(dir.path()).expect("again"), 0, "nothing left to mark");
    }

    #[test]
    fn prune_keeps_the_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("pgdata");
        for n in ["pgdata.old-20240101T000000", "pgdata.old-20240101T000000-1", "pgdata.old-20240101T000000-10"] {
            std::fs::create_dir(dir.path().join(n)).expect("mkdir");
        }
        std::fs::create_dir(dir.path().join("pgdata.old-20250101T000000")).expect("mkdir");
        std::fs::create_dir(dir.path().join("other")).expect("mkdir");
        let removed = prune_moved(&data, 2).expect("prune");
        let names: Vec<String> =
            removed.iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["pgdata.old-20240101T000000", "pgdata.old-20240101T000000-1"]);
        assert!(dir.path().join("pgdata.old-20240101T000000-10").exists());
        assert!(dir.path().join("other").exists());
    }

    #[test]
    fn states() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        assert_eq!(data_dir_state(&data), DataDirState::Empty);
        std::fs::create_dir(&data).expect("mkdir");
        assert_eq!(data_dir_state(&data), DataDirState::Empty);
        std::fs::create_dir(data.join("lost+found")).expect("mkdir");
        assert!(matches!(data_dir_state(&data), DataDirState::Foreign(w) if w.contains("only lost+found")));
        std::fs::write(data.join("PG_VERSION"), "15\n").expect("write");
        assert!(
            matches!(data_dir_state(&data), DataDirState::Foreign(w) if w.contains("found: PG_VERSION, lost+found"))
        );
        std::fs::create_dir(data.join("global")).expect("mkdir");
        std::fs::write(data.join("global/pg_control"), "").expect("write");
        assert_eq!(data_dir_state(&data), DataDirState::Primary);
        std::fs::write(data.join("standby.signal"), "").expect("write");
        assert_eq!(data_dir_state(&data), DataDirState::Standby);
        assert!(ensure_empty(&data).is_err());
    }
}
