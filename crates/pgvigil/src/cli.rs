//! The command line's verbs that talk to the HTTP API of any member: `list`, `pause`, `resume`,
//! `history`. The endpoint comes from `--endpoint` / `PGVIGIL_ENDPOINT`, else from a member's
//! config file (`--config`, its `api.listen`), else `127.0.0.1:8008`; the token from `--token` /
//! `PGVIGIL_TOKEN`, else from that config file.

use crate::client::{self, Reply};
use crate::config;
use crate::list::{self, ClusterView};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// HTTP API of any member: host:port or http://host:port.
    #[arg(long, short = 'e', env = "PGVIGIL_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Bearer token for requests that change the cluster.
    #[arg(long, env = "PGVIGIL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A member's config file: endpoint (`api.listen`) and token from it.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Redraw every `--interval` until Ctrl-C.
    #[arg(long, short = 'W')]
    pub watch: bool,
    #[arg(long, short = 'w', value_parser = humantime::parse_duration, default_value = "2s")]
    pub interval: Duration,
}

#[derive(clap::Args, Debug)]
pub struct PauseArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub force: bool,
    /// Recorded in the cluster's history.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub reason: Option<String>,
}

/// Endpoint and token after flags, environment and config file.
struct Target {
    endpoint: String,
    token: Option<String>,
    output: Output,
}

fn target(a: &ApiArgs) -> anyhow::Result<Target> {
    let from_file = match &a.config {
        Some(path) => Some(config::load(path)?),
        None => None,
    };
    let file_endpoint = from_file.as_ref().and_then(|s| s.raw.api.as_ref()).map(|api| connectable(&api.listen));
    let endpoint = a.endpoint.clone().or(file_endpoint).unwrap_or_else(|| "127.0.0.1:8008".into());
    let token = a.token.clone().or_else(|| from_file.and_then(|s| s.api_token).map(|t| t.0));
    Ok(Target { endpoint, token, output: a.output })
}

/// A listen address one can connect to: an unspecified IP becomes loopback.
fn connectable(listen: &str) -> String {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() && a.is_ipv4() => format!("127.0.0.1:{}", a.port()),
        Ok(a) if a.ip().is_unspecified() => format!("[::1]:{}", a.port()),
        _ => listen.to_string(),
    }
}

fn fail(r: &Reply, what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: HTTP {}: {}", r.status, r.message())
}

pub async fn list(args: ListArgs) -> anyhow::Result<()> {
    let t = target(&args.api)?;
    loop {
        let r = client::get(&t.endpoint, "/cluster").await?;
        if !r.ok() {
            return Err(fail(&r, "list"));
        }
        let view: ClusterView = serde_json::from_value(r.json.clone())
            .map_err(|e| anyhow::anyhow!("unexpected answer from {}: {e}", t.endpoint))?;
        let out = match t.output {
            Output::Json => format!("{}\n", serde_json::to_string_pretty(&view)?),
            Output::Table => list::render(&view),
        };
        if !args.watch {
            print!("{out}");
            return Ok(());
        }
        if std::io::stdout().is_terminal() {
            print!("\x1b[H\x1b[2J");
        }
        print!("{out}");
        if t.output == Output::Table {
            println!();
        }
        std::io::stdout().flush()?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(args.interval) => {}
        }
    }
}

pub async fn history(args: ApiArgs) -> anyhow::Result<()> {
    let t = target(&args)?;
    let r = client::get(&t.endpoint, "/history").await?;
    if !r.ok() {
        return Err(fail(&r, "history"));
    }
    let events: Vec<vigil_core::Event> =
        serde_json::from_value(r.json.clone()).map_err(|e| anyhow::anyhow!("unexpected answer: {e}"))?;
    match t.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&events)?),
        Output::Table => {
            let mut rows = vec![["Epoch", "Time (UTC)", "Event", "Member", "Detail"].map(String::from).to_vec()];
            for e in &events {
                let at = std::time::UNIX_EPOCH + Duration::from_millis(e.at_unix_ms);
                let kind = serde_json::to_value(e.kind).ok().and_then(|v| v.as_str().map(str::to_string));
                rows.push(vec![
                    e.epoch.to_string(),
                    humantime::format_rfc3339_seconds(at).to_string(),
                    kind.unwrap_or_default(),
                    e.member.clone(),
                    e.detail.clone(),
                ]);
            }
            print!("{}", list::boxed(&rows));
        }
    }
    Ok(())
}

/// Ask on the terminal (stderr + a line from stdin); anything but y/yes is a no.
fn confirm(question: &str) -> anyhow::Result<bool> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

pub async fn pause(args: PauseArgs) -> anyhow::Result<()> {
    let t = target(&args.api)?;
    if !args.force
        && !confirm(
            "Pausing turns automatic failover off: a failed primary is not replaced until `pgvigil resume`. Pause?",
        )?
    {
        anyhow::bail!("not paused (answer y, or pass --force)");
    }
    mutate(&t, "/pause", args.reason).await
}

pub async fn resume(args: ResumeArgs) -> anyhow::Result<()> {
    let t = target(&args.api)?;
    mutate(&t, "/resume", args.reason).await
}

/// POST, retried while the cluster answers 503 (an election under way), for up to 15 s: pause
/// and resume are idempotent.
async fn mutate(t: &Target, path: &str, reason: Option<String>) -> anyhow::Result<()> {
    let body = reason.map(|r| serde_json::json!({ "reason": r }).to_string());
    let deadline = Instant::now() + Duration::from_secs(15);
    let r = loop {
        let r =
            client::request(&t.endpoint, "POST", path, t.token.as_deref(), body.as_deref(), Duration::from_secs(10))
                .await?;
        if r.status != 503 || Instant::now() >= deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    match t.output {
        Output::Json => println!("{}", if r.json.is_null() { r.text.clone() } else { r.json.to_string() }),
        Output::Table if r.ok() => println!("{}", r.message()),
        Output::Table => {}
    }
    if r.ok() {
        Ok(())
    } else {
        Err(fail(&r, path.trim_start_matches('/')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_addresses_become_loopback() {
        assert_eq!(connectable("0.0.0.0:8008"), "127.0.0.1:8008");
        assert_eq!(connectable("[::]:8008"), "[::1]:8008");
        assert_eq!(connectable("10.0.0.5:8008"), "10.0.0.5:8008");
    }
}
