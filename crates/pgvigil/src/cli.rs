//! The command line's verbs that talk to the HTTP API of any member: `list`, `pause`, `resume`,
//! `history`, `health`, `switchover`, `failover`, `failback`, `reinit`. The endpoint comes from `--endpoint`
//! / `PGVIGIL_ENDPOINT`, else from a member's config file (`--config`, its `api.listen`), else
//! `127.0.0.1:8008`; the token from `--token-file`, else `PGVIGIL_TOKEN`, else that config file
//! (`--token VALUE` still works but warns: every user sees it in `ps`). For
//! https the CA comes from `--cacert` (with `--cert`/`--key` to present a client certificate),
//! else from that config file's `[tls]`. Verbs that change the cluster ask for confirmation
//! unless `--force`.

use crate::client::{Api, Reply};
use crate::config;
use crate::list::{self, ClusterView};
use crate::tls;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// HTTP API of any member: host:port, http://host:port or https://host:port.
    #[arg(long, short = 'e', env = "PGVIGIL_ENDPOINT")]
    pub endpoint: Option<String>,
    /// A file holding the bearer token for requests that change the cluster (or set
    /// PGVIGIL_TOKEN, or use --config).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The token itself: avoid, every user of the machine sees it in `ps` (use --token-file or
    /// PGVIGIL_TOKEN).
    #[arg(long, value_name = "VALUE", conflicts_with = "token_file")]
    pub token: Option<String>,
    /// A member's config file: endpoint (`api.listen`), token and TLS (`[tls]`) from it.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// https: the CA certificate(s) to trust (PEM). With it a bare host:port is https.
    #[arg(long, env = "PGVIGIL_CACERT")]
    pub cacert: Option<PathBuf>,
    /// https: a client certificate (PEM) to present, for an API that verifies clients.
    #[arg(long, env = "PGVIGIL_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of `--cert`.
    #[arg(long, env = "PGVIGIL_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
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

#[derive(clap::Args, Debug)]
pub struct SwitchoverArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The member to hand over to (default: the best standby).
    #[arg(long)]
    pub candidate: Option<String>,
    /// The current primary, as you expect it: refused if it is another.
    #[arg(long)]
    pub primary: Option<String>,
    /// Start at this time (RFC 3339, e.g. 2030-01-02T03:04:05Z) instead of now.
    #[arg(long)]
    pub at: Option<String>,
    /// Cancel the pending (e.g. scheduled) switchover instead.
    #[arg(long, conflicts_with_all = ["candidate", "primary", "at"])]
    pub cancel: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args, Debug)]
pub struct FailoverArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The standby to promote.
    #[arg(long)]
    pub candidate: String,
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args, Debug)]
pub struct FailbackArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Start at this time (RFC 3339) instead of now.
    #[arg(long)]
    pub at: Option<String>,
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args, Debug)]
pub struct ReinitArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The standby to re-initialise.
    pub member: String,
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args, Debug)]
pub struct HealthArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The health endpoint to ask: `/liveness` (the daemon's loops go round), `/readiness`,
    /// `/health`, `/primary`, `/replica`, ... (a Patroni-style path, with its query if any).
    #[arg(long, default_value = "/liveness")]
    pub path: String,
    /// How long to wait for the answer.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub timeout: Duration,
}

/// Endpoint, TLS and token after flags, environment and config file.
struct Target {
    api: Api,
    token: Option<String>,
    output: Output,
}

fn read_flag(flag: &str, path: &Path) -> Result<Vec<u8>, config::ConfigError> {
    std::fs::read(path)
        .map_err(|e| config::ConfigError { key: flag.into(), message: format!("cannot read {}: {e}", path.display()) })
}

fn target(a: &ApiArgs) -> anyhow::Result<Target> {
    let from_file = match &a.config {
        Some(path) => Some(config::load_file(path)?),
        None => None,
    };
    let file_tls = from_file.as_ref().and_then(|s| s.tls.as_ref()).filter(|t| t.api);
    let file_endpoint = from_file.as_ref().and_then(|s| s.raw.api.as_ref()).map(|api| {
        let scheme = if file_tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", connectable(&api.listen))
    });
    let endpoint = a.endpoint.clone().or(file_endpoint).unwrap_or_else(|| "127.0.0.1:8008".into());
    let tls = match (&a.cacert, file_tls) {
        (Some(ca), _) => {
            let ca_pem = read_flag("--cacert", ca)?;
            let identity = match (&a.cert, &a.key) {
                (Some(c), Some(k)) => Some((read_flag("--cert", c)?, read_flag("--key", k)?)),
                _ => None,
            };
            let identity = identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice()));
            Some(
                tls::client_config(&ca_pem, identity)
                    .map_err(|e| config::ConfigError { key: "--cacert".into(), message: format!("{e:#}") })?,
            )
        }
        (None, Some(t)) => Some(t.api_client_config()?),
        (None, None) if a.cert.is_some() => {
            return Err(config::ConfigError { key: "--cert".into(), message: "needs --cacert".into() }.into())
        }
        (None, None) => None,
    };
    let token = match (&a.token, &a.token_file) {
        (Some(t), _) => {
            eprintln!(
                "pgvigil: warning: --token puts the token in the command line, where every user sees it (ps); \
                 use --token-file or PGVIGIL_TOKEN"
            );
            Some(t.clone())
        }
        (None, Some(path)) => Some(read_token_file(path)?),
        (None, None) => std::env::var("PGVIGIL_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| from_file.and_then(|s| s.api_token).map(|t| t.0)),
    };
    Ok(Target { api: Api::new(&endpoint, tls)?, token, output: a.output })
}

/// The token in `--token-file`, without its trailing newline; missing, unreadable or empty: a usage
/// error (exit 64).
fn read_token_file(path: &Path) -> Result<String, config::ConfigError> {
    let text = String::from_utf8(read_flag("--token-file", path)?).map_err(|_| config::ConfigError {
        key: "--token-file".into(),
        message: format!("{} is not text", path.display()),
    })?;
    let token = text.trim_end_matches(['\n', '\r']).to_string();
    if token.trim().is_empty() {
        return Err(config::ConfigError {
            key: "--token-file".into(),
            message: format!("{} is empty", path.display()),
        });
    }
    Ok(token)
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
        let r = t.api.get("/cluster").await?;
        if !r.ok() {
            return Err(fail(&r, "list"));
        }
        let view: ClusterView = serde_json::from_value(r.json.clone())
            .map_err(|e| anyhow::anyhow!("unexpected answer from {}: {e}", t.api.url()))?;
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
    let r = t.api.get("/history").await?;
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
                let kind = serde_json::to_value(e.kind).ok().and_then(|v| v.as_str().map(str::to_string));
                rows.push(vec![
                    e.epoch.to_string(),
                    vigil_core::format_unix_ms(e.at_unix_ms),
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

/// `pgvigil health`: one GET of a health endpoint, for container health checks (no curl in the
/// image). Ok (exit 0) on a 2xx answer; an error (exit 1) on any other answer or none in time.
pub async fn health(args: HealthArgs) -> anyhow::Result<()> {
    if !args.path.starts_with('/') {
        return Err(config::ConfigError {
            key: "--path".into(),
            message: format!("{:?} does not start with /", args.path),
        }
        .into());
    }
    let t = target(&args.api)?;
    let r = t.api.request("GET", &args.path, None, None, args.timeout).await?;
    if !r.ok() {
        return Err(fail(&r, &format!("GET {} on {}", args.path, t.api.url())));
    }
    if t.output == Output::Json {
        println!("{}", r.text);
    } else {
        println!("ok: GET {} on {}: HTTP {}", args.path, t.api.url(), r.status);
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
        let r = t.api.request("POST", path, t.token.as_deref(), body.as_deref(), Duration::from_secs(10)).await?;
        if r.status != 503 || Instant::now() >= deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    show(t, &r, path)
}

/// Print the answer (its message, or the JSON with `--output json`); an error unless 2xx.
fn show(t: &Target, r: &Reply, path: &str) -> anyhow::Result<()> {
    match t.output {
        Output::Json => println!("{}", if r.json.is_null() { r.text.clone() } else { r.json.to_string() }),
        Output::Table if r.status == 202 => println!("{} (in progress)", r.message()),
        Output::Table if r.ok() => println!("{}", r.message()),
        Output::Table => {}
    }
    if r.ok() {
        Ok(())
    } else {
        Err(fail(r, path.trim_start_matches('/')))
    }
}

/// One request that changes who is primary (never retried: it may have been carried out); it
/// answers once the change is done, so it may take a while.
async fn role_change(
    t: &Target,
    method: &str,
    path: &str,
    body: serde_json::Value,
    wait: Duration,
) -> anyhow::Result<()> {
    let body = body.to_string();
    let r = t.api.request(method, path, t.token.as_deref(), Some(&body), wait).await?;
    show(t, &r, path)
}

/// The primary as the cluster reports it, for the confirmation question ("?" if unknown).
async fn current_primary(t: &Target) -> String {
    let r = t.api.get("/cluster").await.ok();
    r.and_then(|r| r.json.get("primary").and_then(|p| p.as_str()).map(str::to_string)).unwrap_or_else(|| "?".into())
}

fn ask(force: bool, question: &str, refused: &str) -> anyhow::Result<()> {
    if !force && !confirm(question)? {
        anyhow::bail!("{refused} (answer y, or pass --force)");
    }
    Ok(())
}

/// Switchovers and failovers answer when done: within `switchover_timeout` and a lease wait.
const ROLE_CHANGE_WAIT: Duration = Duration::from_secs(90);
/// A reinit answers when the clone is done (or after two minutes, in progress).
const REINIT_WAIT: Duration = Duration::from_secs(150);

pub async fn switchover(args: SwitchoverArgs) -> anyhow::Result<()> {
    let t = target(&args.api)?;
    if args.cancel {
        ask(args.force, "Cancel the pending switchover?", "not cancelled")?;
        return role_change(&t, "DELETE", "/switchover", serde_json::json!({}), ROLE_CHANGE_WAIT).await;
    }
    let primary = current_primary(&t).await;
    let to = args.candidate.as_deref().unwrap_or("the best standby");
    let when = args.at.as_deref().map_or("now".to_string(), |a| format!("at {a}"));
    ask(
        args.force,
        &format!("Switch over from {primary} to {to} {when}? Writes stop for a moment; nothing acknowledged is lost."),
        "no switchover",
    )?;
    let mut body = serde_json::Map::new();
    for (k, v) in [("candidate", args.candidate), ("primary", args.primary), ("at", args.at)] {
        if let Some(v) = v {
            body.insert(k.into(), v.into());
        }
    }
    role_change(&t, "POST", "/switchover", body.into(), ROLE_CHANGE_WAIT).await
}

pub async fn failover(args: FailoverArgs) -> anyhow::Result<()> {
    let t = target(&args.api)?;
    let primary = current_primary(&t).await;
    ask(
        args.force,
        &format!(
            "Force a failover from {primary} to {}? {primary} loses its lease (it is stopped if it still runs), and              commits it has that {} lacks are lost. For a healthy primary, use `pgvigil switchover`.",
            args.candidate, args.candidate
        ),
        "no failover",
    )?;
    role_change(&t, "POST", "/failover", serde_json::json!({ "candidate": args.candidate }), ROLE_CHANGE_WAIT).await
}

pub async fn failback(args: FailbackArgs) -> anyhow::Result<()> {
    let t = target(&args.api)?;
    let primary = current_primary(&t).await;
    ask(
        args.force,
        &format!("Switch over from {primary} back to the preferred (or previous) primary?"),
        "no failback",
    )?;
    let body = match args.at {
        Some(at) => serde_json::json!({ "at": at }),
        None => serde_json::json!({}),
    };
    role_change(&t, "POST", "/failback", body, ROLE_CHANGE_WAIT).await
}

pub async fn reinit(args: ReinitArgs) -> anyhow::Result<()> {
    let t = target(&args.api)?;
    ask(
        args.force,
        &format!("Re-initialise {}? Its data directory is moved aside and cloned again from the primary.", args.member),
        "not re-initialised",
    )?;
    role_change(&t, "POST", "/reinit", serde_json::json!({ "member": args.member }), REINIT_WAIT).await
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
