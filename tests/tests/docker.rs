//! The container tier: the image, the compose files, the Debian package and the Kubernetes
//! example. Each test needs a Docker engine with the pgvigil image built, so they are ignored by a
//! plain `cargo test`; `scripts/docker-tier.sh` (part of `scripts/test.sh`, so of CI) prepares the
//! engine, the base image, the image, the package and the validator, then runs them with
//! `--ignored`. Each compose test runs a project of its own, removed at the end (also on failure).

use std::time::Duration;
use vigil_core::EventKind;
use vigil_tests::compose::{docker, repo_root, run, wait_until, Compose};

const BOOT: Duration = Duration::from_secs(120);
const FAILOVER: Duration = Duration::from_secs(60);
const REJOIN: Duration = Duration::from_secs(90);

/// A row on `primary`, seen on every other database member.
fn write_replicated(c: &Compose, primary: &str, table: &str, rows: i64) -> anyhow::Result<()> {
    c.sql(primary, &format!("CREATE TABLE IF NOT EXISTS {table} (id int PRIMARY KEY)"))?;
    c.sql(primary, &format!("INSERT INTO {table} VALUES ({rows})"))?;
    for s in c.databases.iter().filter(|s| *s != primary) {
        c.wait_rows(s, table, rows, Duration::from_secs(30))?;
    }
    Ok(())
}

fn other<'a>(list: &'a [&'a str], not: &[&str]) -> Vec<&'a str> {
    list.iter().copied().filter(|s| !not.contains(s)).collect()
}

/// Up; one primary and two streaming standbys; a write on both; `docker kill` of the primary: the
/// standby that may fail over is promoted, the nofailover replica is not, `docker start` rejoins
/// it; `docker network disconnect` of the primary: fenced and replaced, reconnected: it rejoins.
#[test]
#[ignore = "needs Docker and the pgvigil image: scripts/docker-tier.sh"]
fn classic_topology_kill_and_partition() -> anyhow::Result<()> {
    let mut c = Compose::classic("classic")?;
    let all = ["db1", "db2", "db3"];
    c.up()?;
    let p0 = c.wait_healthy("db2", None, &all, BOOT)?;
    assert_ne!(p0, "db3", "db3 is tagged nofailover");
    assert_eq!(c.streaming_count(&p0)?, 2, "the primary sees two streaming standbys");
    write_replicated(&c, &p0, "t_classic", 1)?;
    assert_eq!(c.sql("db3", "SELECT pg_is_in_recovery()")?, "t", "the read-only replica is a standby");
    // A client through the published port (from the network's gateway) is let in at once: the
    // reverse lookup pg_hba.conf's host names cause is answered locally (extra_hosts).
    let (answer, took) = c.host_sql(&p0, "SELECT count(*) FROM t_classic")?;
    assert_eq!(answer, "1");
    assert!(took < Duration::from_secs(3), "a client through the published port waited {took:?}");
    // The image's HEALTHCHECK (pgvigil health, GET /liveness) passes on every member.
    for s in all {
        wait_until(&format!("{s} healthy"), Duration::from_secs(60), || Ok((c.health(s)? == "healthy").then_some(())))?;
    }

    // docker kill: the other failover-able member is promoted, never db3.
    let asked = "db3";
    c.kill(&p0)?;
    let p1 = c.wait_healthy(asked, Some(&p0), &other(&all, &[&p0]), FAILOVER)?;
    assert_ne!(p1, "db3", "the nofailover replica was promoted");
    assert_eq!(c.sql(&p1, "SELECT count(*) FROM t_classic")?, "1", "the replicated row is on the new primary");
    // docker start: it rejoins as a standby of the new primary, no human step.
    c.start(&p0)?;
    c.wait_healthy(asked, None, &all, REJOIN)?;
    assert_eq!(c.sql(&p0, "SELECT pg_is_in_recovery()")?, "t", "the old primary came back as a standby");
    write_replicated(&c, &p1, "t_classic", 2)?;

    // docker network disconnect of the primary: it fences itself, the other is promoted.
    c.disconnect(&p1)?;
    let p2 = c.wait_healthy(asked, Some(&p1), &other(&all, &[&p1]), FAILOVER)?;
    assert_ne!(p2, "db3", "the nofailover replica was promoted");
    wait_until(
        &format!("{p1} fenced (not writable) while cut off"),
        FAILOVER,
        || Ok((!c.writable(&p1)).then_some(())),
    )?;
    c.connect(&p1)?;
    c.wait_healthy(asked, None, &all, REJOIN)?;
    assert_eq!(c.sql(&p1, "SELECT pg_is_in_recovery()")?, "t", "the cut-off primary rejoined as a standby");
    write_replicated(&c, &p2, "t_classic", 3)?;
    assert_eq!(c.streaming_count(&p2)?, 2);

    assert_eq!(c.nofailover_promoted, None, "a nofailover member was seen as the primary");
    let history = c.history(&p2)?;
    let failovers: Vec<&str> =
        history.iter().filter(|e| e.kind == EventKind::Failover).map(|e| e.member.as_str()).collect();
    assert_eq!(failovers, vec![p1.as_str(), p2.as_str()], "two failovers, to {p1} then {p2}: {history:?}");
    Ok(())
}

/// `docker stop` of the primary is a planned switchover (the graceful stop), not a failover, and
/// the stopped member rejoins when started; `down` then `up` brings back the same data and the
/// same primary from the volumes.
#[test]
#[ignore = "needs Docker and the pgvigil image: scripts/docker-tier.sh"]
fn classic_topology_stop_and_restart() -> anyhow::Result<()> {
    let mut c = Compose::classic("stop")?;
    let all = ["db1", "db2", "db3"];
    c.up()?;
    let p0 = c.wait_healthy("db3", None, &all, BOOT)?;
    write_replicated(&c, &p0, "t_stop", 1)?;

    let took = c.stop(&p0)?;
    assert!(took < Duration::from_secs(60), "docker stop took {took:?}: the grace period ran out");
    let p1 = c.wait_healthy("db3", Some(&p0), &other(&all, &[&p0]), FAILOVER)?;
    assert_ne!(p1, "db3");
    let history = c.history("db3")?;
    assert!(
        history.iter().any(|e| e.kind == EventKind::Switchover && e.member == p1),
        "docker stop of the primary is a switchover to {p1}: {history:?}"
    );
    assert!(!history.iter().any(|e| e.kind == EventKind::Failover), "no failover on docker stop: {history:?}");
    // Nothing was lost: the switchover is zero-loss.
    assert_eq!(c.sql(&p1, "SELECT count(*) FROM t_stop")?, "1");
    c.start(&p0)?;
    c.wait_healthy("db3", None, &all, REJOIN)?;
    assert!(
        !c.history("db3")?.iter().any(|e| e.kind == EventKind::Rewind || e.kind == EventKind::Reclone),
        "the cleanly stopped primary follows without a rewind"
    );
    write_replicated(&c, &p1, "t_stop", 2)?;

    // down (volumes kept) and up: the same data and the same primary. `down` stops every member at
    // once: the primary's graceful stop may start a switchover to a standby that is stopping too,
    // which then either completes (a Switchover event: that standby is the primary) or is
    // cancelled (the same primary). Either way the cluster comes back from its volumes: no new
    // bootstrap, no failover, the primary the history names.
    let before = c.cluster("db3")?;
    c.down_keep_volumes()?;
    c.up()?;
    let again = c.wait_healthy("db3", None, &all, BOOT)?;
    let history = c.history("db3")?;
    let later: Vec<_> = history.iter().filter(|e| e.epoch > before.epoch).collect();
    assert!(
        later.iter().all(|e| matches!(e.kind, EventKind::Requested | EventKind::Switchover | EventKind::Cancelled)),
        "only the graceful stop's switchover after down/up: {later:?}"
    );
    assert_eq!(history.iter().filter(|e| e.kind == EventKind::Bootstrap).count(), 1, "{history:?}");
    let expected =
        later.iter().rev().find(|e| e.kind == EventKind::Switchover).map_or(p1.clone(), |e| e.member.clone());
    assert_eq!(again, expected, "the primary before down (or its switchover's) is the primary after up: {history:?}");
    for s in all {
        c.wait_rows(s, "t_stop", 2, Duration::from_secs(30))?;
    }
    write_replicated(&c, &again, "t_stop", 3)?;
    assert_eq!(c.nofailover_promoted, None);
    Ok(())
}

/// Two database hosts and a witness: losing the primary's container promotes the standby (the
/// witness and the standby are a majority); the old primary rejoins when started.
#[test]
#[ignore = "needs Docker and the pgvigil image: scripts/docker-tier.sh"]
fn witness_variant_failover() -> anyhow::Result<()> {
    let mut c = Compose::witness("witness")?;
    let dbs = ["db1", "db2"];
    c.up()?;
    let p0 = c.wait_healthy("witness", None, &dbs, BOOT)?;
    let view = c.cluster("witness")?;
    assert!(view.members.iter().any(|m| m.name == "witness" && m.role == "witness"), "{view:?}");
    write_replicated(&c, &p0, "t_witness", 1)?;
    c.kill(&p0)?;
    let standby = other(&dbs, &[&p0])[0];
    let p1 = c.wait_healthy("witness", Some(&p0), &[standby], FAILOVER)?;
    assert_eq!(p1, standby);
    assert_eq!(c.sql(&p1, "SELECT count(*) FROM t_witness")?, "1");
    c.start(&p0)?;
    c.wait_healthy("witness", None, &dbs, REJOIN)?;
    write_replicated(&c, &p1, "t_witness", 2)?;
    Ok(())
}

/// The Debian package (`PGVIGIL_DEB`, made by packaging/build-deb.sh) in a fresh container of the
/// same base: `dpkg -i` then `apt-get -f install` brings its dependencies, `pgvigil --version`
/// runs, `systemd-analyze verify` accepts the installed unit, the example config is a conffile
/// that passes `pgvigil check-config` once its secrets exist, and nothing was enabled or started.
#[test]
#[ignore = "needs Docker and the .deb: scripts/docker-tier.sh"]
fn deb_installs_in_a_fresh_container() -> anyhow::Result<()> {
    let deb = std::env::var("PGVIGIL_DEB").map_err(|_| anyhow::anyhow!("PGVIGIL_DEB is not set"))?;
    // A relative path is the repository's (cargo runs the test in tests/).
    let deb = repo_root().join(deb);
    let dir = deb
        .parent()
        .and_then(|d| d.canonicalize().ok())
        .ok_or_else(|| anyhow::anyhow!("no directory {}", deb.display()))?;
    let name = deb.file_name().and_then(|n| n.to_str()).ok_or_else(|| anyhow::anyhow!("bad PGVIGIL_DEB"))?;
    let script = format!(
        r#"set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# dpkg -i stops on the missing dependencies; apt-get -f install brings them and configures pgvigil.
dpkg -i /pkg/{name} >/tmp/dpkg.log 2>&1 || true
apt-get -f install -y -qq >/tmp/apt.log 2>&1 || {{ cat /tmp/dpkg.log /tmp/apt.log; exit 1; }}
dpkg -s pgvigil | grep -q '^Status: install ok installed'
echo "version: $(pgvigil --version)"
test -x /usr/bin/pgvigil
grep -qx /etc/pgvigil/pgvigil.toml /var/lib/dpkg/info/pgvigil.conffiles
echo "config: $(stat -c '%U:%G %a' /etc/pgvigil/pgvigil.toml)"
test -f /usr/share/doc/pgvigil/CONFIG.md
# Installing started and enabled nothing.
if ls /etc/systemd/system/*.wants/pgvigil.service 2>/dev/null; then echo "enabled by the install"; exit 1; fi
if grep -qx pgvigil /proc/[0-9]*/comm 2>/dev/null; then echo "started by the install"; exit 1; fi
apt-get install -y -qq systemd >/dev/null 2>&1
systemd-analyze verify /lib/systemd/system/pgvigil.service >/tmp/verify.log 2>&1 || {{ cat /tmp/verify.log; exit 1; }}
if [ -s /tmp/verify.log ]; then echo "systemd-analyze verify complained:"; cat /tmp/verify.log; exit 1; fi
echo "verify: clean"
# The example is a valid config once its secrets exist.
pgvigil gen-secret /etc/pgvigil/cluster.secret --owner postgres >/dev/null
printf 'replication-secret\n' >/etc/pgvigil/replication.password
printf 'api-token\n' >/etc/pgvigil/api.token
chown postgres /etc/pgvigil/replication.password /etc/pgvigil/api.token
chmod 600 /etc/pgvigil/replication.password /etc/pgvigil/api.token
runuser -u postgres -- pgvigil check-config /etc/pgvigil/pgvigil.toml
"#
    );
    let out = docker(&[
        "run",
        "--rm",
        "--network",
        "host",
        "-v",
        &format!("{}:/pkg:ro", dir.display()),
        "debian:bookworm-slim",
        "bash",
        "-c",
        &script,
    ])?;
    println!("{out}");
    assert!(out.contains("version: pgvigil "), "{out}");
    assert!(out.contains("config: root:postgres 640"), "{out}");
    assert!(out.contains("verify: clean"), "{out}");
    assert!(out.contains("ok: /etc/pgvigil/pgvigil.toml (member db1, postgres, 3 members)"), "{out}");
    Ok(())
}

/// The Kubernetes example passes offline schema validation (`kubernetes-validate`, its path in
/// `PGVIGIL_KUBERNETES_VALIDATE`), and holds what the issue asks of it.
#[test]
#[ignore = "needs kubernetes-validate: scripts/docker-tier.sh"]
fn k8s_example_validates() -> anyhow::Result<()> {
    let validator = std::env::var("PGVIGIL_KUBERNETES_VALIDATE").unwrap_or_else(|_| "kubernetes-validate".into());
    let file = repo_root().join("k8s/pgvigil.yaml");
    let out = run(std::process::Command::new(&validator).arg("--strict").arg(&file))?;
    println!("{out}");
    assert_eq!(out.matches(" passed for resource ").count(), 4, "four resources validated: {out}");
    let text = std::fs::read_to_string(&file)?;
    for needle in [
        "podManagementPolicy: Parallel",
        "publishNotReadyAddresses: true",
        "kind: PodDisruptionBudget",
        "maxUnavailable: 1",
        "volumeClaimTemplates:",
        "path: /readiness",
        "path: /liveness",
        "terminationGracePeriodSeconds: 90",
    ] {
        assert!(text.contains(needle), "k8s/pgvigil.yaml lacks {needle:?}");
    }
    Ok(())
}
