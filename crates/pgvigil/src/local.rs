//! The agent's local memory ([`LocalMemory`]) in `<state_dir>/local.json`, written atomically.

use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};
use vigil_core::LocalMemory;

pub struct LocalFile {
    path: PathBuf,
}

impl LocalFile {
    pub fn new(state_dir: &Path) -> Self {
        LocalFile { path: state_dir.join("local.json") }
    }

    pub fn load(&self) -> anyhow::Result<LocalMemory> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("parse {}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LocalMemory::default()),
            Err(e) => Err(e).with_context(|| format!("read {}", self.path.display())),
        }
    }

    /// tmp + fsync + rename + fsync(dir): after a crash the file is the old or the new one, whole.
    pub fn save(&self, memory: &LocalMemory) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        // 0600: the daemon's own memory, no one else's business.
        let mut f = std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().write(true).create(true).truncate(true),
            0o600,
        )
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(memory)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path).with_context(|| format!("rename to {}", self.path.display()))?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_core::Upstream;

    #[test]
    fn memory_survives_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = LocalFile::new(dir.path());
        assert_eq!(f.load().expect("empty"), LocalMemory::default());
        let m = LocalMemory {
            primary_epoch: Some(3),
            upstream: Some(Upstream { host: "h".into(), port: 1 }),
            switchover_stop: Some(vigil_core::report::SwitchoverStop { epoch: 3, id: 1, lsn: 9, timeline: 2 }),
            reinit_done: Some(4),
        };
        f.save(&m).expect("save");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("local.json")).expect("stat").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "only the daemon reads its memory");
        assert_eq!(LocalFile::new(dir.path()).load().expect("load"), m);
        // A file written before the switchover and reinit fields existed.
        std::fs::write(dir.path().join("local.json"), r#"{"primary_epoch": 2, "upstream": null}"#).expect("write");
        let old = f.load().expect("old file");
        assert_eq!((old.primary_epoch, old.switchover_stop, old.reinit_done), (Some(2), None, None));
    }
}
