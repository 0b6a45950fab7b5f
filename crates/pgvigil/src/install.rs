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
