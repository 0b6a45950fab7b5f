//! The control file as `pg_controldata` shows it (works while the server is down), and a
//! `CHECKPOINT` before a planned shutdown.

use std::time::Duration;

use anyhow::Context as _;

use crate::lsn::parse_lsn;
use crate::postgres::Postgres;
use crate::tool;

/// What a switchover needs from the control file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlData {
    /// "Database cluster state": `shut down` after a clean shutdown of a primary, `shut down in
    /// recovery` of a standby, `in production` while a primary runs (or after it crashed).
    pub state: String,
    /// "Latest checkpoint location": where the latest checkpoint record starts.
    pub checkpoint_lsn: u64,
    /// "Latest checkpoint's TimeLineID".
    pub timeline: u32,
}

impl ControlData {
    /// A primary's clean shutdown: its last record is the shutdown checkpoint.
    pub fn shut_down_cleanly(&self) -> bool {
        self.state == "shut down"
    }
}

/// The fields of `pg_controldata`'s output (in the C locale) that [`ControlData`] holds.
pub fn parse_controldata(text: &str) -> anyhow::Result<ControlData> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(str::trim))
            .with_context(|| format!("no {name:?} in pg_controldata's output"))
    };
    let lsn = field("Latest checkpoint location")?;
    let tli = field("Latest checkpoint's TimeLineID")?;
    Ok(ControlData {
        state: field("Database cluster state")?.to_string(),
        checkpoint_lsn: parse_lsn(lsn).with_context(|| format!("bad checkpoint location {lsn:?}"))?,
        timeline: tli.parse().with_context(|| format!("bad timeline {tli:?}"))?,
    })
}

impl Postgres {
    /// Read the control file with `pg_controldata` (as the server's user).
    pub async fn control_data(&self) -> anyhow::Result<ControlData> {
        let mut cmd = tool::command(self.settings(), "pg_controldata");
        cmd.arg("-D").arg(&self.settings().data_dir).env("LC_ALL", "C");
        let out = tool::output(cmd, "pg_controldata").await?;
        parse_controldata(&out)
    }

    /// `CHECKPOINT`, so that a shutdown right after it has little left to write. Bounded by `within`.
    pub async fn checkpoint(&self, within: Duration) -> anyhow::Result<()> {
        let run = async {
            let client = self.connect().await?;
            client.batch_execute("CHECKPOINT").await.context("CHECKPOINT")
        };
        tokio::time::timeout(within, run)
            .await
            .map_err(|_| anyhow::anyhow!("CHECKPOINT took longer than {within:?}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controldata_fields() {
        let text = "pg_control version number:            1300\n\
                    Database cluster state:               shut down\n\
                    Latest checkpoint location:           0/3000028\n\
                    Latest checkpoint's REDO location:    0/3000028\n\
                    Latest checkpoint's TimeLineID:       2\n\
                    Latest checkpoint's PrevTimeLineID:   1\n";
        let c = parse_controldata(text).expect("parse");
        assert_eq!(c, ControlData { state: "shut down".into(), checkpoint_lsn: 0x3000028, timeline: 2 });
        assert!(c.shut_down_cleanly());
        let running = text.replace("shut down", "in production");
        assert!(!parse_controldata(&running).expect("parse").shut_down_cleanly());
        assert!(parse_controldata("nothing").is_err());
    }
}
