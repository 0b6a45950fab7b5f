//! `pgvigil demo`: a local cluster (PostgreSQL + pgvigil per member) on loopback ports under one
//! temporary directory, shown as a table, until Ctrl-C; then everything it started is stopped.
//!
//! SIGINT and SIGTERM are handled from the first moment: one that arrives while the cluster is
//! still starting (initdb, the bootstrap, the clones) stops it just the same.

use crate::launch::{self, ClusterSpec, LocalCluster};
use crate::list;
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long the daemons get to stop their PostgreSQL before they and everything below them are
/// killed.
const STOP_GRACE: Duration = Duration::from_secs(20);

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Number of PostgreSQL members.
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// Number of witness members (vote, no PostgreSQL).
    #[arg(long, default_value_t = 0)]
    pub witnesses: usize,
    /// Directory for everything (default: a new temporary directory, removed at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the directory at the end.
    #[arg(long)]
    pub keep: bool,
    /// PostgreSQL's binaries.
    #[arg(long, default_value = "/usr/lib/postgresql/15/bin")]
    pub pg_bin_dir: PathBuf,
    /// Stop after this long instead of waiting for Ctrl-C (e.g. "30s").
    #[arg(long, value_parser = humantime::parse_duration)]
    pub run_for: Option<Duration>,
}

pub async fn run(args: DemoArgs) -> ExitCode {
    match demo(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgvigil demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A token cancelled on the first SIGINT or SIGTERM. Later ones are taken too (and ignored): the
/// demo is then stopping, bounded by [`STOP_GRACE`].
fn stop_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("handle SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("handle SIGTERM")?;
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        token.cancel();
    });
    Ok(stop)
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let stop = stop_signals()?;
    if !args.pg_bin_dir.join("postgres").exists() {
        anyhow::bail!(
            "no PostgreSQL in {} (install it: apt-get install -y postgresql, or pass --pg-bin-dir)",
            args.pg_bin_dir.display()
        );
    }
    if args.members + args.witnesses < 2 || args.members == 0 {
        anyhow::bail!("need at least one PostgreSQL member and two members in all");
    }
    let (dir, _temp) = match &args.dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new().prefix("pgvigil-demo-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let bin = std::env::current_exe()?;
    let mut spec = ClusterSpec::local(&dir, &bin, args.members, args.witnesses)?;
    spec.pg_bin_dir = args.pg_bin_dir.clone();
    // With pgBackRest installed, a local repository shared by the members: WAL is archived and
    // `pgvigil backup` works out of the box.
    let pgbackrest = std::path::Path::new("/usr/bin/pgbackrest");
    if pgbackrest.exists() {
        spec.backup = vec![
            "stanza = \"demo\"".into(),
            format!("repo_path = {:?}", dir.join("repo").display().to_string()),
            "schedule.full = \"0 1 * * 0\"".into(),
            "schedule.diff = \"0 1 * * 1-6\"".into(),
        ];
    }
    // Every PostgreSQL member runs the routing proxy, so clients can try them all (libpq multi-host).
    for m in spec.members.iter_mut().filter(|m| m.kind == vigil_core::MemberKind::Postgres) {
        m.proxy_ports = Some((launch::free_port()?, launch::free_port()?));
    }
    if stop.is_cancelled() {
        return Ok(());
    }
    // Dropped on an error below: its daemons (and what they started) are stopped then too.
    let mut cluster = LocalCluster::prepare(spec)?;
    // Each daemon would refuse a config it cannot run with (exit 64) while the demo waited for a
    // cluster: check the files first and say why, as `pgvigil run` would.
    for m in &cluster.spec.members {
        let path = cluster.spec.config_path(&m.name);
        crate::config::load(&path).map_err(|e| anyhow::anyhow!("member {}: {e}", m.name))?;
    }
    cluster.start_all()?;
    println!("Starting {} members under {} ...", args.members + args.witnesses, dir.display());
    let ready = tokio::select! {
        view = cluster.wait_for("a primary and streaming standbys", Duration::from_secs(90), launch::healthy) => view,
        _ = stop.cancelled() => {
            println!("\nInterrupted while starting: stopping ...");
            return finish(cluster, _temp, args.keep).await;
        }
    };
    let view = ready?;

    println!();
    for m in &cluster.spec.members {
        let api = format!("http://127.0.0.1:{}", m.api_port);
        match m.kind {
            vigil_core::MemberKind::Postgres => println!(
                "  {:<9} api {api}  PGPASSFILE={} psql \"host=127.0.0.1 port={} user=postgres\"",
                m.name,
                cluster.spec.pgpass_file().display(),
                m.pg_port
            ),
            vigil_core::MemberKind::Witness => println!("  {:<9} api {api}  (witness)", m.name),
        }
    }
    let proxies: Vec<(u16, u16)> = cluster.spec.members.iter().filter_map(|m| m.proxy_ports).collect();
    let ports_of =
        |pick: fn(&(u16, u16)) -> u16| proxies.iter().map(|p| pick(p).to_string()).collect::<Vec<_>>().join(",");
    let hosts = vec!["127.0.0.1"; proxies.len()].join(",");
    let pgpass = cluster.spec.pgpass_file();
    println!("\n  Through the routing proxy of any member (libpq tries each in turn):");
    println!(
        "  read-write  PGPASSFILE={} psql \"host={hosts} port={} user=postgres\"",
        pgpass.display(),
        ports_of(|p| p.0)
    );
    println!(
        "  read-only   PGPASSFILE={} psql \"host={hosts} port={} user=postgres\"",
        pgpass.display(),
        ports_of(|p| p.1)
    );
    println!("  logs: {}/<member>/pgvigil.log and postgresql.log\n", dir.display());
    print!("{}", list::table(&view));
    let first = cluster.spec.api_address(&cluster.spec.members[0].name).unwrap_or_default();
    println!("\nWatch it: pgvigil list --endpoint {first} --watch   (kill a primary's processes to see a failover)");
    let token_file = cluster.spec.token_file();
    println!("Pause it: pgvigil pause --endpoint {first} --token-file {}", token_file.display());
    println!(
        "Switch over (zero loss): pgvigil switchover --config {} [--candidate <member>]",
        cluster.spec.config_path(&cluster.spec.members[0].name).display()
    );
    if !cluster.spec.backup.is_empty() {
        println!(
            "Back up (pgBackRest, repository {}/repo): pgvigil backup --config {} [--type full|diff|incr]; pgvigil backups --config ...",
            dir.display(),
            cluster.spec.config_path(&cluster.spec.members[0].name).display()
        );
    }
    println!("Ctrl-C stops the demo and everything it started.");

    match args.run_for {
        Some(d) => {
            tokio::select! { _ = tokio::time::sleep(d) => {}, _ = stop.cancelled() => {} }
        }
        None => stop.cancelled().await,
    }
    println!("\nStopping ...");
    finish(cluster, _temp, args.keep).await
}

/// Stop the daemons and whatever they left (off the runtime: it waits and polls), then keep or
/// remove the temporary directory.
async fn finish(mut cluster: LocalCluster, temp: Option<tempfile::TempDir>, keep: bool) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || cluster.stop_all(STOP_GRACE)).await.context("stopping the cluster")?;
    if let Some(t) = temp.filter(|_| keep) {
        let kept = t.keep();
        println!("Kept {}", kept.display());
    }
    Ok(())
}
