//! The PostgreSQL installation a member's config names (`postgres.bin_dir`), checked at load: the
//! programs the daemon runs exist and are executable, and an existing data directory was made by
//! the same major version.

use crate::config::{ConfigError, Settings};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The programs of `bin_dir` the daemon runs (vigil-pg: the postmaster, initdb, pg_basebackup,
/// pg_rewind, pg_controldata).
pub const PROGRAMS: &[&str] = &["postgres", "initdb", "pg_basebackup", "pg_rewind", "pg_controldata"];

/// How long `postgres --version` may take.
const VERSION_DEADLINE: Duration = Duration::from_secs(5);

fn bad(message: String) -> ConfigError {
    ConfigError { key: "postgres.bin_dir".into(), message }
}

/// Check `postgres.bin_dir` of a PostgreSQL member (a witness has none).
pub fn check(settings: &Settings) -> Result<(), ConfigError> {
    let Some(pg) = &settings.raw.postgres else { return Ok(()) };
    // pgBackRest runs in PostgreSQL's archiver: missing, every WAL segment would pile up.
    if let Some(b) = &settings.backup {
        let path = &b.raw.pgbackrest;
        let key = || "backup.pgbackrest".to_string();
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
            Ok(_) => {
                return Err(ConfigError {
                    key: key(),
                    message: format!("{} is not an executable file", path.display()),
                })
            }
            Err(e) => {
                let message = format!("{}: {e} (apt-get install pgbackrest)", path.display());
                return Err(ConfigError { key: key(), message });
            }
        }
    }
    let bin = &pg.bin_dir;
    for program in PROGRAMS {
        let path = bin.join(program);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
            Ok(_) => return Err(bad(format!("{} is not an executable file", path.display()))),
            Err(e) => return Err(bad(format!("{}: {e} (is PostgreSQL installed there?)", path.display()))),
        }
    }
    if nix::unistd::geteuid().is_root() {
        let user = pg.run_as_user();
        // An unknown user is the agent's to report (`postgres.run_as`), when it starts.
        if let Ok(r) = vigil_pg::RunAs::user(user) {
            if let Some(message) = unreachable_by(&pg.data_dir, user, r.uid, &groups_of(user, r.gid)) {
                return Err(ConfigError { key: "postgres.data_dir".into(), message });
            }
        }
    }
    let Some(data_version) = data_dir_version(&pg.data_dir) else { return Ok(()) };
    let bin_version = postgres_major(bin)?;
    if bin_version != data_version {
        return Err(bad(format!(
            "{} is PostgreSQL {bin_version}, but the data directory {} holds a PostgreSQL {data_version} cluster",
            bin.display(),
            pg.data_dir.display()
        )));
    }
    Ok(())
}

/// The major version in `<data_dir>/PG_VERSION`, if there is a cluster there (and it can be read).
fn data_dir_version(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join("PG_VERSION")).ok()?;
    Some(text.trim().to_string()).filter(|v| !v.is_empty())
}

/// The major version of `<bin>/postgres --version` ("postgres (PostgreSQL) 15.8 (Debian ...)": 15).
fn postgres_major(bin: &Path) -> Result<String, ConfigError> {
    let program = bin.join("postgres");
    let mut child = Command::new(&program)
        .arg("--version")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| bad(format!("cannot run {} --version: {e}", program.display())))?;
    let deadline = Instant::now() + VERSION_DEADLINE;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(bad(format!("{} --version did not answer within {VERSION_DEADLINE:?}", program.display())));
            }
        }
    }
    let out = child.wait_with_output().map_err(|e| bad(format!("{} --version: {e}", program.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    major_of(&text)
        .ok_or_else(|| bad(format!("cannot read a version in {:?} ({} --version)", text.trim(), program.display())))
}

/// "postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)" -> "15"; "16beta1" -> "16"; "9.6.24" -> "9.6".
pub fn major_of(version_output: &str) -> Option<String> {
    let word = version_output.split_whitespace().find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let digits = |s: &str| s.chars().take_while(char::is_ascii_digit).collect::<String>();
    let mut parts = word.split('.');
    let first = digits(parts.next()?);
    match first.parse::<u32>() {
        Ok(n) if n < 10 => Some(format!("{first}.{}", digits(parts.next().unwrap_or("0")))),
        Ok(_) => Some(first),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::major_of;

    #[test]
    fn major_versions_are_read_from_postgres_version() {
        assert_eq!(major_of("postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)\n").as_deref(), Some("15"));
        assert_eq!(major_of("postgres (PostgreSQL) 16beta1").as_deref(), Some("16"));
        assert_eq!(major_of("postgres (PostgreSQL) 9.6.24").as_deref(), Some("9.6"));
        assert_eq!(major_of("no version here"), None);
    }
}

/// The groups of `user` (primary group `gid`), as its processes get them.
fn groups_of(user: &str, gid: u32) -> Vec<u32> {
    std::ffi::CString::new(user)
        .ok()
        .and_then(|name| nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid)).ok())
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|| vec![gid])
}

/// Why PostgreSQL's user (`user`: `uid`, in `groups`) could not reach `data_dir`, if it
/// could not: the first existing directory above it that it may not enter. The daemon runs as
/// root and PostgreSQL as that user, which must traverse every directory above its data directory;
/// otherwise initdb or the clone fails in every attempt (a root-only home directory, a 0700 temp
/// directory) and a new cluster keeps choosing who initialises. Directories that do not exist yet
/// are created by the daemon (root's umask: traversable).
fn unreachable_by(data_dir: &Path, user: &str, uid: u32, groups: &[u32]) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mut ancestors: Vec<&Path> = data_dir.ancestors().skip(1).collect();
    ancestors.reverse();
    for dir in ancestors {
        let Ok(m) = std::fs::metadata(dir) else { break };
        if !may_enter(m.mode(), m.uid(), m.gid(), uid, groups) {
            return Some(format!(
                "{} is not reachable by PostgreSQL's user {user:?}: it may not enter {} (mode {:04o}, owner uid {}); \
                 put the data directory where {user:?} can reach it, or allow it in (chmod o+x {})",
                data_dir.display(),
                dir.display(),
                m.mode() & 0o7777,
                m.uid(),
                dir.display()
            ));
        }
    }
    None
}

/// May a process of `uid` (in `groups`) enter a directory of `mode`, owned by `owner`:`group`?
/// The owner's bits apply to its owner, the group's to its members, the others' to the rest.
fn may_enter(mode: u32, owner: u32, group: u32, uid: u32, groups: &[u32]) -> bool {
    if uid == 0 {
        return true;
    }
    let bit = if owner == uid {
        0o100
    } else if groups.contains(&group) {
        0o010
    } else {
        0o001
    };
    mode & bit != 0
}

#[cfg(test)]
mod reach_tests {
    use super::*;

    #[test]
    fn the_owner_group_or_other_bits_decide() {
        // A root-only home directory: postgres (uid 100) may not enter.
        assert!(!may_enter(0o40700, 0, 0, 100, &[101]));
        assert!(may_enter(0o40711, 0, 0, 100, &[101]));
        // Its own directory, whatever the others' bits.
        assert!(may_enter(0o40700, 100, 101, 100, &[101]));
        // Owned by root, group postgres with x: enters through the group only.
        assert!(may_enter(0o40750, 0, 101, 100, &[101]));
        assert!(!may_enter(0o40750, 0, 102, 100, &[101]));
        // The owner's bits apply to the owner even when the others' allow it (as the kernel does).
        assert!(!may_enter(0o40071, 100, 0, 100, &[101]));
    }

    #[test]
    fn a_directory_postgres_cannot_enter_is_named() {
        let t = tempfile::tempdir().expect("test setup");
        // The temp dir itself may be 0700 and the test's own: open it, so only `closed` decides.
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o711)).expect("test setup");
        let closed = t.path().join("closed");
        std::fs::create_dir(&closed).expect("test setup");
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).expect("test setup");
        let owner = std::fs::metadata(&closed).map(|m| std::os::unix::fs::MetadataExt::uid(&m)).expect("test setup");
        // A user that is not the owner and in none of its groups.
        let other = owner.wrapping_add(4242);
        let why = unreachable_by(&closed.join("pg1/pgdata"), "someone", other, &[other]).unwrap_or_default();
        assert!(why.contains(&format!("may not enter {}", closed.display())), "{why}");
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o711)).expect("test setup");
        assert_eq!(unreachable_by(&closed.join("pg1/pgdata"), "someone", other, &[other]), None);
    }
}
