//! SIGHUP reloads a running daemon's configuration: what may change at runtime takes effect
//! (tags reach the cluster view, the log level changes), the rest is named as needing a restart,
//! a broken file is refused, and neither the daemon nor its PostgreSQL restarts.

use nix::sys::signal::Signal;
use std::path::Path;
use std::time::{Duration, Instant};
use vigil_tests::{ClusterView, TestCluster};

/// Wait until the log at `path`, from byte `from` on, satisfies `ready`; the text read so far.
async fn wait_log(path: &Path, from: usize, timeout: Duration, ready: impl Fn(&str) -> bool) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let bytes = std::fs::read(path)?;
        let text = String::from_utf8_lossy(bytes.get(from..).unwrap_or_default()).into_owned();
        if ready(&text) {
            return Ok(text);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{}: not seen within {timeout:?}; log since:\n{text}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn log_len(path: &Path) -> usize {
    std::fs::metadata(path).map(|m| m.len() as usize).unwrap_or(0)
}

/// `member` in `GET /cluster` asked through `via`.
async fn member_tags(t: &TestCluster, via: &str, member: &str) -> anyhow::Result<(bool, i32)> {
    let r = t.get(via, "/cluster").await?;
    anyhow::ensure!(r.status == 200, "GET /cluster on {via}: {r:?}");
    let view: ClusterView = serde_json::from_value(r.json)?;
    let m = view.members.iter().find(|m| m.name == member).ok_or_else(|| anyhow::anyhow!("no {member}"))?;
    Ok((m.nofailover, m.priority))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_tags_and_log_level_and_refuses_a_broken_file() -> anyhow::Result<()> {
    let mut t = TestCluster::start(2, 1).await?;
    let primary = t.primary().await?;
    let member = t.other_pg_members(&primary).remove(0);
    let daemon = t.cluster.daemon_pid(&member).expect("running");
    let postmaster = t.postmaster_pid(&member).expect("PostgreSQL runs");
    let log = t.spec().state_dir(&member).join("pgvigil.log");
    let config = t.spec().config_path(&member);
    let original = std::fs::read_to_string(&config)?;
    assert!(original.contains("[tags]\nnofailover = false\npriority = 0\n"), "{original}");
    assert_eq!(member_tags(&t, &primary, &member).await?, (false, 0));

    // Tags and log level reload; the synchronous node count needs a restart.
    let changed = original
        .replace("[tags]\nnofailover = false\npriority = 0\n", "[tags]\nnofailover = true\npriority = 7\n")
        .replace("level = \"info\"", "level = \"debug\"")
        .replace("[replication]\n", "[replication]\nsynchronous_node_count = 2\n");
    std::fs::write(&config, &changed)?;
    let from = log_len(&log);
    t.cluster.signal(&member, Signal::SIGHUP)?;
    let text = wait_log(&log, from, Duration::from_secs(20), |l| {
        l.contains("configuration reloaded") && l.contains("needs a restart") && l.contains("DEBUG")
    })
    .await?;
    let applied = text.lines().find(|l| l.contains("configuration reloaded")).unwrap_or_default();
    for key in ["log.level", "tags.nofailover", "tags.priority"] {
        assert!(applied.contains(key), "the applied keys name {key}: {applied}");
    }
    let restart = text.lines().find(|l| l.contains("needs a restart")).unwrap_or_default();
    assert!(restart.contains("replication.synchronous_node_count"), "{restart}");
    assert!(!restart.contains("tags."), "tags need no restart: {restart}");
    // The new tags reach the coordinator with the next report and show in the cluster view.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = member_tags(&t, &primary, &member).await;
        if matches!(got, Ok((true, 7))) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "tags not in GET /cluster: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shown = t.get(&member, "/config").await?;
    assert_eq!(shown.json["tags"]["priority"], 7, "{:?}", shown.json);
    assert_eq!(shown.json["log"]["level"], "debug", "{:?}", shown.json);
    assert_eq!(shown.json["replication"]["synchronous_node_count"], 1, "not applied: {:?}", shown.json);

    // A broken file is refused, the key named; the daemon goes on with what it had.
    std::fs::write(&config, changed.replace("[timing]\n", "[timing]\nlease_timeout = \"soon\"\n"))?;
    let from = log_len(&log);
    t.cluster.signal(&member, Signal::SIGHUP)?;
    let text = wait_log(&log, from, Duration::from_secs(20), |l| l.contains("refused")).await?;
    let refused = text.lines().find(|l| l.contains("refused")).unwrap_or_default();
    assert!(refused.contains("timing.lease_timeout"), "the error names the key: {refused}");
    t.wait_http(&member, "/liveness", 200, Duration::from_secs(10)).await?;
    assert_eq!(member_tags(&t, &primary, &member).await?, (true, 7), "the running config stays");

    // Neither the daemon nor its PostgreSQL restarted.
    assert!(t.cluster.is_running(&member), "the daemon lives on");
    assert_eq!(t.cluster.daemon_pid(&member), Some(daemon));
    assert_eq!(t.postmaster_pid(&member), Some(postmaster), "PostgreSQL was not restarted");
    Ok(())
}
