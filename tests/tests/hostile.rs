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

/// The issue's attack: hand-made RPCs to a member's peer port (no credential, or one made with
/// another secret) are refused, each of the four, and the cluster is as it was: not paused, the
/// same primary, no new event. The harness' own clients (with the secret) still get answers, so
/// the refusals are the credential's doing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_rpcs_without_the_cluster_credential_are_refused_and_change_nothing() -> anyhow::Result<()> {
    use vigil_raft::auth::ClusterKey;
    use vigil_raft::{proto, PeerClients};
    let t = TestCluster::start(2, 1).await?;
    let before = t.view().await?;
    let other_secret = ClusterKey::generate().map_err(anyhow::Error::msg)?;
    let strangers = [
        ("no credential", PeerClients::new()),
        (
            "another secret",
            PeerClients::new()
                .with_key(std::sync::Arc::new(ClusterKey::parse_file(&other_secret).map_err(anyhow::Error::msg)?)),
        ),
    ];
    let report = proto::ReportRequest {
        report_json: pgvigil::convert::encode_report(&vigil_core::HealthReport {
            member: "pg1".into(),
            kind: vigil_core::MemberKind::Postgres,
            pg_host: "127.0.0.1".into(),
            pg_port: 5432,
            tags: Default::default(),
            pg: Default::default(),
            epoch_seen: before.state.epoch,
            proxy: None,
            backup_source: None,
        })?,
    };
    let pause = proto::AdminRequest { action: "pause".into(), body_json: r#"{"reason": "hostile"}"#.into() };
    for m in &t.spec().members {
        let addr = t.spec().peer_address(&m.name).expect("member");
        for (who, clients) in &strangers {
            let mut c = clients.client(&addr)?;
            let refused = [
                ("Raft", c.raft(proto::RaftMessage { message: vec![8, 3, 16, 1], sender: "pg1".into() }).await.err()),
                ("Report", c.report(report.clone()).await.err()),
                ("GetState", c.get_state(proto::StateRequest {}).await.err()),
                ("Admin", c.admin(pause.clone()).await.err()),
            ];
            for (rpc, status) in refused {
                let status = status.unwrap_or_else(|| panic!("{rpc} to {} with {who} was answered", m.name));
                assert_eq!(status.code(), tonic::Code::Unauthenticated, "{rpc} to {} with {who}: {status:?}", m.name);
            }
        }
    }
    let after = t.view().await?;
    assert!(!after.state.paused, "a stranger paused the cluster");
    assert_eq!(after.state.primary, before.state.primary);
    assert_eq!(after.state.history.len(), before.state.history.len(), "no new event: {:?}", after.state.history);
    // Each refusal is logged, but at most once a minute per member (a stranger retrying must not
    // flood the log).
    for m in &t.spec().members {
        let log = std::fs::read_to_string(t.spec().state_dir(&m.name).join("pgvigil.log"))?;
        let lines = log.lines().filter(|l| l.contains("peer request refused")).count();
        assert!((1..=2).contains(&lines), "{}: {lines} refusal lines", m.name);
    }
    Ok(())
}

/// Replication only from the members' addresses: a replication connection from 127.0.0.2 (not a
/// member; every member here is 127.0.0.1) is turned away by pg_hba before any password is asked
/// for, while the same startup packet from 127.0.0.1 is asked for its password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_from_an_address_that_is_not_a_member_is_refused() -> anyhow::Result<()> {
    let mut t = TestCluster::prepare(1, 0, |_| {})?;
    t.cluster.start_all()?;
    t.wait_for("a primary", Duration::from_secs(60), vigil_tests::healthy).await?;
    let member = t.primary().await?;
    let port = t.spec().member(&member).expect("member").pg_port;
    let from_member = startup_answer("127.0.0.1", port).await?;
    assert_eq!(from_member.0, b'R', "a member's address is asked to authenticate: {from_member:?}");
    let from_elsewhere = startup_answer("127.0.0.2", port).await?;
    assert_eq!(from_elsewhere.0, b'E', "{from_elsewhere:?}");
    assert!(from_elsewhere.1.contains("no pg_hba.conf entry for replication connection"), "{from_elsewhere:?}");
    Ok(())
}

/// Send a physical replication startup packet for `replicator` from `source` and return the
/// type of the first message PostgreSQL answers with, and its text.
async fn startup_answer(source: &str, port: u16) -> anyhow::Result<(u8, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse()?)?;
    let mut stream = socket.connect(format!("127.0.0.1:{port}").parse()?).await?;
    let params = b"user\0replicator\0replication\0true\0\0";
    let mut packet = Vec::new();
    packet.extend_from_slice(&(8 + params.len() as u32).to_be_bytes());
    packet.extend_from_slice(&196608u32.to_be_bytes());
    packet.extend_from_slice(params);
    stream.write_all(&packet).await?;
    let mut head = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut head)).await??;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len.saturating_sub(4).min(1 << 16)];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut body)).await??;
    Ok((head[0], String::from_utf8_lossy(&body).into_owned()))
}

/// What the daemons (and PostgreSQL under them) write is theirs alone: no file that group or
/// others may read, no directory they may list or write (a state directory may be 0711 so that
/// PostgreSQL's user can traverse it when the daemon runs as root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_the_daemons_write_is_open_to_other_users() -> anyhow::Result<()> {
    let t = TestCluster::start(2, 1).await?;
    let mut checked = 0;
    let mut open = Vec::new();
    let mut stack = vec![t.spec().dir.clone()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        let mode = meta.permissions().mode() & 0o7777;
        let kind = meta.file_type();
        if kind.is_dir() {
            if mode & 0o066 != 0 {
                open.push(format!("{} (directory, {mode:04o})", path.display()));
            }
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        } else if kind.is_file() && mode & 0o077 != 0 {
            open.push(format!("{} ({mode:04o})", path.display()));
        }
        checked += 1;
    }
    assert!(checked > 50, "walked {checked} entries");
    assert!(open.is_empty(), "open to other users: {open:#?}");
    Ok(())
}
