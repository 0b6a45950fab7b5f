//! Configuration files: the block we add to `postgresql.conf` at initdb, `pg_hba.conf`, the standby
//! settings in `postgresql.auto.conf`, and the quoting each of them needs.

use std::path::Path;

use anyhow::Context as _;

use crate::datadir::write_file_atomic;
use crate::settings::{PgSettings, RunAs, Upstream};

/// Settings every member gets, so any standby can become a primary and any old primary can be rewound.
pub const CLUSTER_PARAMETERS: &[(&str, &str)] = &[
    ("wal_level", "replica"),
    ("hot_standby", "on"),
    // pg_rewind needs hint-bit changes WAL-logged (checksums, also on, imply it; this is belt and braces).
    ("wal_log_hints", "on"),
    ("max_wal_senders", "10"),
    ("max_replication_slots", "10"),
    ("wal_keep_size", "512MB"),
    // A standby whose upstream vanished retries quickly, so a follow after failover connects fast.
    ("wal_retrieve_retry_interval", "500ms"),
    ("hot_standby_feedback", "on"),
    ("password_encryption", "scram-sha-256"),
];

/// Marks the lines we append, so a human reading the file knows where they came from.
const MARKER: &str = "# --- added by pgvigil at initdb ---";

/// Quote a value for a PostgreSQL configuration file: `'...'` with `'` doubled and backslashes
/// escaped (the file parser treats `\` as an escape character inside quotes).
pub fn quote_guc(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A value inside a libpq connection string: as is when plain, else `'...'` with `\` and `'`
/// backslash-escaped. (Plain values keep `postgresql.auto.conf` readable.)
pub fn quote_conninfo(value: &str) -> String {
    let plain = !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || "._-:/@".contains(c));
    if plain {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Quote an SQL identifier (`"..."`, `"` doubled).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quote an SQL string literal for statements that take no bind parameters (`ALTER ROLE ... PASSWORD`,
/// `ALTER SYSTEM`). Relies on `standard_conforming_strings = on` (the default since 9.1), where a
/// backslash is an ordinary character; we check that setting before using this.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// GUC names are identifiers, possibly with a dot for extension settings. Anything else would let a
/// name inject extra lines into the file.
pub fn check_guc_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    anyhow::ensure!(ok, "invalid configuration parameter name {name:?}");
    Ok(())
}

/// The password file (libpq's `passfile`) that `primary_conninfo` names, in the data directory.
/// The replication password stays out of `primary_conninfo`, which the server prints into its log
/// whenever the setting changes (a follow after a failover).
pub const PASSFILE: &str = "pgvigil.pgpass";

/// The one line of the password file: the replication user's password, for any host, port and
/// database (`replication` included). `\` and `:` are escaped; a line break cannot be written.
pub fn passfile_line(user: &str, password: &str) -> anyhow::Result<String> {
    let escape = |v: &str| v.replace('\\', "\\\\").replace(':', "\\:");
    anyhow::ensure!(
        !user.contains(['\n', '\r']) && !password.contains(['\n', '\r']),
        "the replication user or password contains a line break, which a password file cannot hold"
    );
    Ok(format!("*:*:*:{}:{}\n", escape(user), escape(password)))
}

/// Write `<data_dir>/pgvigil.pgpass` (mode 0600 and owned by PostgreSQL's user: libpq ignores a
/// password file that others may read).
pub fn write_passfile(settings: &PgSettings) -> anyhow::Result<()> {
    let line = passfile_line(&settings.replication_user, &settings.replication_password)?;
    write_file_atomic(&settings.data_dir.join(PASSFILE), line.as_bytes(), 0o600, settings.run_as)
        .context("write the replication password file")
}

/// The `primary_conninfo` a standby of `upstream` uses; the password comes from [`PASSFILE`]
/// (see [`write_passfile`]).
pub fn primary_conninfo(settings: &PgSettings, upstream: &Upstream) -> String {
    // Short connect timeout and TCP keepalives: after a failover the walreceiver must notice a dead
    // upstream and reach the new one in seconds, not after the kernel's minutes-long retries.
    format!(
        "host={} port={} user={} passfile={} application_name={} connect_timeout=2 \
         keepalives=1 keepalives_idle=5 keepalives_interval=2 keepalives_count=3",
        quote_conninfo(&upstream.host),
        upstream.port,
        quote_conninfo(&settings.replication_user),
        quote_conninfo(&settings.data_dir.join(PASSFILE).display().to_string()),
        quote_conninfo(&settings.member),
    )
}

/// The settings of a standby of `upstream` using `slot`, as (name, value) pairs.
pub fn standby_settings(settings: &PgSettings, upstream: &Upstream, slot: &str) -> [(&'static str, String); 2] {
    [("primary_conninfo", primary_conninfo(settings, upstream)), ("primary_slot_name", slot.to_string())]
}

/// The lines appended to `postgresql.conf` at initdb: the cluster-wide settings, then the user's.
pub fn postgresql_conf_block(settings: &PgSettings) -> anyhow::Result<String> {
    let mut out = format!("\n{MARKER}\n");
    let ours = CLUSTER_PARAMETERS.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    let theirs = settings.parameters.iter().cloned();
    for (name, value) in ours.chain(theirs) {
        check_guc_name(&name)?;
        // A later line wins in postgresql.conf, so the user's parameters override ours.
        out.push_str(&format!("{name} = {}\n", quote_guc(&value)));
    }
    Ok(out)
}

/// The whole `pg_hba.conf`. First match wins, so our lines come first and `hba_extra` after.
pub fn pg_hba(settings: &PgSettings) -> String {
    let su = quote_hba_name(&settings.superuser);
    let repl = quote_hba_name(&settings.replication_user);
    let mut out = String::from(
        "# Written by pgvigil at initdb.\n\
         # TYPE  DATABASE     USER  ADDRESS  METHOD\n",
    );
    // The daemon's own connections: the superuser over the unix socket only.
    out.push_str(&format!("local   all          {su}  trust\n"));
    // The replication user only from the cluster's own hosts (and the operator's extra networks);
    // pg_rewind (and monitoring) need an ordinary connection as that user too.
    for source in &settings.replication_sources {
        let addr = hba_address(source);
        out.push_str(&format!("host    replication  {repl}  {addr}  scram-sha-256\n"));
        out.push_str(&format!("host    all          {repl}  {addr}  scram-sha-256\n"));
    }
    if !settings.hba_extra.is_empty() {
        out.push_str("# hba_extra\n");
        for line in &settings.hba_extra {
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out
}

/// An address for pg_hba.conf: a bare IP becomes a single-host CIDR; a CIDR or a host name stays.
fn hba_address(source: &str) -> String {
    let s = source.trim().trim_start_matches('[').trim_end_matches(']');
    match s.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => format!("{ip}/32"),
        Ok(std::net::IpAddr::V6(ip)) => format!("{ip}/128"),
        Err(_) => s.to_string(),
    }
}

/// A user name in pg_hba.conf: quoted when it holds anything but plain identifier characters.
fn quote_hba_name(name: &str) -> String {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Set `values` in `postgresql.auto.conf` the way `ALTER SYSTEM` would: drop earlier lines for the
/// same names, append the new ones. Atomic (temp file + rename), owned by `run_as`.
pub fn set_auto_conf(data_dir: &Path, values: &[(&str, String)], run_as: Option<RunAs>) -> anyhow::Result<()> {
    let path = data_dir.join("postgresql.auto.conf");
    let old = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let new = merge_auto_conf(&old, values)?;
    write_file_atomic(&path, new.as_bytes(), 0o600, run_as)
}

/// The text of `postgresql.auto.conf` after setting `values` on `old`.
pub fn merge_auto_conf(old: &str, values: &[(&str, String)]) -> anyhow::Result<String> {
    let mut out = String::new();
    if old.trim().is_empty() {
        out.push_str("# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n");
    }
    for line in old.lines() {
        let key = line.split_once('=').map(|(k, _)| k.trim().to_ascii_lowercase());
        let replaced = key.is_some_and(|k| values.iter().any(|(name, _)| k == *name));
        if !replaced {
            out.push_str(line);
            out.push('\n');
        }
    }
    for (name, value) in values {
        check_guc_name(name)?;
        out.push_str(&format!("{name} = {}\n", quote_guc(value)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_only_from_the_listed_sources() {
        assert_eq!(hba_address("10.0.0.5"), "10.0.0.5/32");
        assert_eq!(hba_address("[fd00::5]"), "fd00::5/128");
        assert_eq!(hba_address("10.1.0.0/16"), "10.1.0.0/16");
        assert_eq!(hba_address("db2.example"), "db2.example");
        let mut s = crate::settings::tests_support::settings();
        s.replication_sources = vec!["10.0.0.5".into(), "10.1.0.0/16".into()];
        let hba = pg_hba(&s);
        assert!(!hba.contains("0.0.0.0/0") && !hba.contains("::/0"), "{hba}");
        assert!(hba.contains("host    replication  replicator  10.0.0.5/32  scram-sha-256"), "{hba}");
        assert!(hba.contains("host    all          replicator  10.1.0.0/16  scram-sha-256"), "{hba}");
    }

    #[test]
    fn guc_quoting() {
        assert_eq!(quote_guc("plain"), "'plain'");
        assert_eq!(quote_guc("it's"), "'it''s'");
        assert_eq!(quote_guc(r"a\b"), r"'a\\b'");
    }

    #[test]
    fn password_file_lines() {
        assert_eq!(passfile_line("replicator", "pw").ok().as_deref(), Some("*:*:*:replicator:pw\n"));
        assert_eq!(passfile_line("r:e", r"p\w:d").ok().as_deref(), Some("*:*:*:r\\:e:p\\\\w\\:d\n"));
        assert!(passfile_line("replicator", "two\nlines").is_err());
    }

    #[test]
    fn conninfo_quoting() {
        assert_eq!(quote_conninfo("p w'd\\"), r"'p w\'d\\'");
        assert_eq!(quote_conninfo("10.0.0.1"), "10.0.0.1");
        assert_eq!(quote_conninfo("db-1.example.com"), "db-1.example.com");
        assert_eq!(quote_conninfo(""), "''");
        assert_eq!(quote_conninfo("a=b"), "'a=b'");
    }

    #[test]
    fn auto_conf_replaces_only_named_lines() {
        let old = "# Do not edit\nwork_mem = '4MB'\nprimary_conninfo = 'host=a'\nPrimary_Slot_Name='x'\n";
        let new =
            merge_auto_conf(old, &[("primary_conninfo", "host=b".to_string()), ("primary_slot_name", "s".to_string())])
                .expect("merge");
        assert_eq!(new, "# Do not edit\nwork_mem = '4MB'\nprimary_conninfo = 'host=b'\nprimary_slot_name = 's'\n");
    }

    #[test]
    fn rejects_bad_guc_names() {
        assert!(check_guc_name("work_mem").is_ok());
        assert!(check_guc_name("pg_stat_statements.max").is_ok());
        assert!(check_guc_name("a = 1\nfsync").is_err());
        assert!(check_guc_name("").is_err());
    }
}
