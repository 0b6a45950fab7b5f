//! Bootstraps that must not get stuck, on real clusters: a data directory that is not
//! PostgreSQL's (a stray file, a bare mount point holding only `lost+found`) is left alone and
//! never chosen; a bootstrap primary whose initdb fails gives the bootstrap back, and the cluster
//! is created by another member, or by the same one once it is fixed, without wiping any state.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vigil_core::{DataDir, EventKind};
use vigil_tests::{healthy, TestCluster, View};

const CONVERGE: Duration = Duration::from_secs(90);
use vigil_tests::PG_BIN_DIR as REAL_BIN;

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    n.sort();
    n
}

/// A primary other than those in `not` is committed and writable, and every member outside
/// `not` runs (the primary writable, the others streaming).
fn working_without(v: &View, not: &[&str]) -> bool {
    let Some(p) = v.state.primary.as_deref().filter(|p| !not.contains(p)) else { return false };
    v.reports
        .iter()
        .filter(|(n, r)| !not.contains(&n.as_str()) && r.kind == vigil_core::MemberKind::Postgres)
        .all(|(n, r)| r.pg.running && if n == p { !r.pg.in_recovery } else { r.pg.in_recovery && r.pg.streaming })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_data_directories_are_never_chosen_and_left_untouched() -> anyhow::Result<()> {
    // pg1 and pg2 are preferred, so only their data directories could keep them from being chosen.
    let mut t = TestCluster::prepare(3, 0, |spec| {
        spec.members[0].tags.set("priority", 10i64);
        spec.members[1].tags.set("priority", 5i64);
    })?;
    let stray = t.spec().data_dir("pg1");
    std::fs::create_dir_all(&stray)?;
    std::fs::write(stray.join("notes.txt"), "not a database\n")?;
    // A bare mount point: initdb refuses a directory holding lost+found.
    let mount = t.spec().data_dir("pg2");
    std::fs::create_dir_all(mount.join("lost+found"))?;
    t.cluster.start_all()?;

    let v = t
        .wait_for("pg3 bootstraps, pg1 and pg2 report their data directories", CONVERGE, |v| {
            working_without(v, &["pg1", "pg2"])
                && ["pg1", "pg2"]
                    .iter()
                    .all(|m| v.reports.get(*m).is_some_and(|r| r.pg.data_dir == DataDir::Foreign && r.pg.needs_rejoin))
        })
        .await?;
    assert_eq!(v.state.primary.as_deref(), Some("pg3"));
    assert_eq!(v.state.epoch, 1);
    let found = |m: &str| v.reports.get(m).and_then(|r| r.pg.data_dir_problem.clone()).unwrap_or_default();
    assert!(found("pg1").contains("notes.txt"), "{}", found("pg1"));
    assert!(found("pg2").contains("only lost+found") && found("pg2").contains("subdirectory"), "{}", found("pg2"));
    t.execute("pg3", "CREATE TABLE t (id int); INSERT INTO t VALUES (1)").await?;

    // Untouched all through the bootstrap: nothing initialised, cloned, started or moved aside.
    assert_eq!(names(&stray), ["notes.txt"]);
    assert_eq!(std::fs::read_to_string(stray.join("notes.txt"))?, "not a database\n");
    assert_eq!(names(&mount), ["lost+found"]);
    let parent = names(&t.spec().state_dir("pg1"));
    assert!(!parent.iter().any(|n| n.contains(".old-") || n.contains("clone")), "{parent:?}");
    Ok(())
}

/// A `bin_dir` whose initdb fails while `<data_dir>.fail-initdb` exists; every other program is
/// PostgreSQL's own.
fn bin_dir_with_breakable_initdb(dir: &Path) -> anyhow::Result<PathBuf> {
    let script = format!(
        "#!/bin/sh\nfor a in \"$@\"; do\n  if [ -e \"$a.fail-initdb\" ]; then\n    \
         echo \"initdb: broken by the test\" >&2\n    exit 1\n  fi\ndone\nexec {REAL_BIN}/initdb \"$@\"\n"
    );
    vigil_tests::bin_dir_with_initdb(dir, &script)
}

fn broken_marker(t: &TestCluster, member: &str) -> PathBuf {
    vigil_pg::datadir::sibling(&t.spec().data_dir(member), ".fail-initdb")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_initdb_gives_the_bootstrap_to_another_member() -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("pgvigil-bin-").tempdir()?;
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o711))?;
    let bin = bin_dir_with_breakable_initdb(scratch.path())?;
    let mut t = TestCluster::prepare(3, 0, |spec| {
        spec.pg_bin_dir = bin.clone();
        spec.members[0].tags.set("priority", 10i64);
    })?;
    std::fs::write(broken_marker(&t, "pg1"), "")?;
    t.cluster.start_all()?;

    let v = t.wait_for("another member bootstraps, pg1 follows it", CONVERGE, healthy).await?;
    let primary = v.state.primary.clone().unwrap_or_default();
    assert_ne!(primary, "pg1");
    let failed: Vec<_> = v.state.history.iter().filter(|e| e.kind == EventKind::BootstrapFailed).collect();
    assert!(
        failed.first().is_some_and(|e| e.member == "pg1" && e.detail.contains("broken by the test")),
        "{:?}",
        v.state.history
    );
    assert!(v.state.history.iter().any(|e| e.kind == EventKind::Bootstrap && e.member == primary));
    assert_eq!(v.state.bootstrapped_by.as_deref(), Some(primary.as_str()));
    t.execute(&primary, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)").await?;
    t.wait_rows("pg1", "t", 1, Duration::from_secs(20)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_member_whose_initdb_failed_bootstraps_once_fixed() -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("pgvigil-bin-").tempdir()?;
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o711))?;
    let bin = bin_dir_with_breakable_initdb(scratch.path())?;
    let mut t = TestCluster::prepare(1, 0, |spec| spec.pg_bin_dir = bin.clone())?;
    let marker = broken_marker(&t, "pg1");
    std::fs::write(&marker, "")?;
    t.cluster.start_all()?;

    let v = t
        .wait_for("the bootstrap given back", CONVERGE, |v| {
            v.state.history.iter().any(|e| e.kind == EventKind::BootstrapFailed && e.member == "pg1")
        })
        .await?;
    assert!(v.reports.get("pg1").is_some_and(|r| r.pg.bootstrap_failed.is_some() && r.pg.data_dir == DataDir::Empty));
    // The operator fixes the cause; no state directory is wiped, no daemon restarted.
    std::fs::remove_file(&marker)?;
    let v = t.wait_for("pg1 the primary", CONVERGE, healthy).await?;
    assert_eq!(v.state.primary.as_deref(), Some("pg1"));
    assert!(v.state.epoch >= 2, "a new epoch for the new bootstrap: {}", v.state.epoch);
    assert_eq!(v.state.bootstrap_epoch, v.state.epoch);
    assert!(v.reports.get("pg1").is_some_and(|r| r.pg.bootstrap_failed.is_none()));
    // The superuser's password is set just after the new primary reports itself (seen failing
    // authentication on a loaded machine): wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !t.accepts_connections("pg1").await {
        anyhow::ensure!(std::time::Instant::now() < deadline, "pg1 takes no connection with the password");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.execute("pg1", "CREATE TABLE t (id int); INSERT INTO t VALUES (1)").await?;
    Ok(())
}
