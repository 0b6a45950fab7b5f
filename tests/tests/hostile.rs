//! What a local user who is not PostgreSQL's (or the daemon's) may do: nothing as the superuser.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use vigil_tests::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_local_user_cannot_reach_the_superuser_socket() -> anyhow::Result<()> {
    // One member: "settled" (the coordinator off the primary's host) cannot happen; healthy can.
    let mut t = TestCluster::prepare(1, 0, |_| {})?;
    t.cluster.start_all()?;
    t.wait_for("a primary", Duration::from_secs(60), vigil_tests::healthy).await?;
    let member = t.primary().await?;
    let run = t.spec().state_dir(&member).join("run");
    let mode = std::fs::metadata(&run)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the socket directory is private to PostgreSQL's user");
    let port = t.spec().member(&member).expect("member").pg_port.to_string();
    let psql = |user: &'static str| {
        let (run, port) = (run.clone(), port.clone());
        async move {
            let out = tokio::time::timeout(
                Duration::from_secs(20),
                tokio::process::Command::new("runuser")
                    .args(["-u", user, "--", "/usr/lib/postgresql/15/bin/psql", "-X", "-w", "-At"])
                    .arg("-h")
                    .arg(&run)
                    .args([
                        "-p",
                        &port,
                        "-U",
                        "postgres",
                        "-d",
                        "postgres",
                        "-c",
                        "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                    ])
                    .output(),
            )
            .await??;
            anyhow::Ok(out)
        }
    };
    // PostgreSQL's own user gets in (the check can tell the two cases apart)...
    let own = psql("postgres").await?;
    assert_eq!(String::from_utf8_lossy(&own.stdout).trim(), "t", "{own:?}");
    // ...and anyone else does not.
    let other = psql("nobody").await?;
    assert!(!other.status.success(), "nobody connected as the superuser: {other:?}");
    assert!(!String::from_utf8_lossy(&other.stdout).contains('t'), "{other:?}");
    Ok(())
}
