//! `pgvigil backup [--type full|diff|incr]` and `pgvigil backups`, over any member's HTTP API.

use crate::cli::{fail, show, target, ApiArgs, Output};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// full, diff or incr.
    #[arg(long = "type", default_value = "full")]
    pub kind: String,
    /// Recorded with the backup.
    #[arg(long)]
    pub reason: Option<String>,
    /// Answer once the backup started, without waiting for its end.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the end.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "4h")]
    pub wait: Duration,
}

/// Start a backup; unless `--no-wait`, wait for its outcome in `GET /backups` (exit 1 if it failed).
pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let t = target(&args.api)?;
    let body = serde_json::json!({ "type": args.kind, "reason": args.reason }).to_string();
    let r = t.api.request("POST", "/backup", t.token.as_deref(), Some(&body), Duration::from_secs(30)).await?;
    if args.no_wait || !r.ok() {
        return show(&t, &r, "/backup");
    }
    let id = r.json.get("id").and_then(|v| v.as_u64()).ok_or_else(|| anyhow::anyhow!("no backup id in {}", r.text))?;
    if t.output == Output::Table {
        println!("{}", r.message());
    }
    let describe = |id: u64, d: &serde_json::Value| {
        format!(
            "backup {id} done on {}: {} ({} bytes)",
            d["member"].as_str().unwrap_or("?"),
            d.pointer("/outcome/label").and_then(|v| v.as_str()).unwrap_or("?"),
            d.pointer("/outcome/size_bytes").and_then(|v| v.as_u64()).unwrap_or(0)
        )
    };
    match wait_for_end(&t, id, "backups", args.wait, describe).await? {
        End::Succeeded => Ok(()),
        End::Failed(e) => Err(anyhow::anyhow!("backup {id} failed: {e}")),
        End::NotYet => {
            anyhow::bail!("backup {id} has not ended within {:?} (it goes on; see `pgvigil backups`)", args.wait)
        }
    }
}

/// How a backup or a verification the CLI waited for ended.
enum End {
    Succeeded,
    Failed(String),
    /// Not within the wait.
    NotYet,
}

/// Polls `GET /backups` until the record `id` of the list `list` (`backups`, `verifications`)
/// shows an outcome, and prints it (as JSON, or `describe`'s line when it succeeded).
async fn wait_for_end(
    t: &crate::cli::Target,
    id: u64,
    list: &str,
    wait: Duration,
    describe: impl Fn(u64, &serde_json::Value) -> String,
) -> anyhow::Result<End> {
    let deadline = Instant::now() + wait;
    loop {
        let l = t.api.get("/backups").await?;
        if !l.ok() {
            return Err(fail(&l, "backups"));
        }
        let done = l
            .json
            .get(list)
            .and_then(|b| b.as_array())
            .and_then(|b| b.iter().find(|d| d.get("id").and_then(|v| v.as_u64()) == Some(id)).cloned());
        if let Some(d) = done {
            let error = d.pointer("/outcome/error").and_then(|e| e.as_str()).map(str::to_string);
            if t.output == Output::Json {
                println!("{d}");
            } else if error.is_none() {
                println!("{}", describe(id, &d));
            }
            return Ok(error.map_or(End::Succeeded, End::Failed));
        }
        if Instant::now() >= deadline {
            return Ok(End::NotYet);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The backups the cluster recorded, newest last, and the running one.
pub async fn backups(args: ApiArgs) -> anyhow::Result<()> {
    let t = target(&args)?;
    let r = t.api.get("/backups").await?;
    if !r.ok() {
        return Err(fail(&r, "backups"));
    }
    if t.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&r.json)?);
        return Ok(());
    }
    let mut rows =
        vec![["Id", "Type", "Member", "Epoch", "Finished (UTC)", "Label", "Size", "Result"].map(String::from)];
    for d in r.json.get("backups").and_then(|b| b.as_array()).into_iter().flatten() {
        let s = |p: &str| d.pointer(p).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let n = |p: &str| d.pointer(p).and_then(|v| v.as_u64()).unwrap_or(0);
        let result = match d.pointer("/outcome/error").and_then(|v| v.as_str()) {
            None => "ok".to_string(),
            Some(e) => format!("failed: {}", e.lines().next().unwrap_or(e)),
        };
        rows.push([
            n("/id").to_string(),
            s("/kind"),
            s("/member"),
            n("/epoch").to_string(),
            vigil_core::format_unix_ms(n("/finished_unix_ms")),
            s("/outcome/label"),
            n("/outcome/size_bytes").to_string(),
            result,
        ]);
    }
    let widths: Vec<usize> = (0..8).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    for row in &rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("  ").trim_end());
    }
    if let Some(run) = r.json.get("running").filter(|v| !v.is_null()) {
        println!(
            "running: backup {} ({}) on {}, attempt {}",
            run["id"],
            run["kind"].as_str().unwrap_or("?"),
            run["member"].as_str().unwrap_or("?"),
            run["attempts"]
        );
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Answer once the verification started, without waiting for its end.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the end.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2h")]
    pub wait: Duration,
}

/// Verify the latest backup now (on a standby); unless `--no-wait`, wait for the outcome in
/// `GET /backups` (exit 1 if it failed).
pub async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let t = target(&args.api)?;
    let r = t.api.request("POST", "/backup/verify", t.token.as_deref(), Some("{}"), Duration::from_secs(30)).await?;
    if args.no_wait || !r.ok() {
        return show(&t, &r, "/backup/verify");
    }
    let id = r.json.get("id").and_then(|v| v.as_u64()).ok_or_else(|| anyhow::anyhow!("no id in {}", r.text))?;
    if t.output == Output::Table {
        println!("{}", r.message());
    }
    let describe = |id: u64, d: &serde_json::Value| {
        format!(
            "verification {id} passed on {}: {} restored, recovered and verified in {} ms",
            d["member"].as_str().unwrap_or("?"),
            d.pointer("/outcome/label").and_then(|v| v.as_str()).unwrap_or("?"),
            d["duration_ms"].as_u64().unwrap_or(0)
        )
    };
    match wait_for_end(&t, id, "verifications", args.wait, describe).await? {
        End::Succeeded => Ok(()),
        End::Failed(e) => Err(anyhow::anyhow!("verification {id} failed: {e}")),
        End::NotYet => anyhow::bail!("verification {id} has not ended within {:?} (see `pgvigil backups`)", args.wait),
    }
}
