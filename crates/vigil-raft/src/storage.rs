//! Durable `raft::Storage`: everything is held in memory and mirrored to three files in the
//! state directory.
//!
//! - `hardstate`: the `HardState` (term, vote, commit), replaced atomically.
//! - `snapshot`: the latest `Snapshot` with its metadata (index, term, `ConfState`) and the
//!   state machine's bytes, replaced atomically. It is also the membership on disk.
//! - `log`: append-only records, each "these entries, replacing any at index >= the first one",
//!   fsynced per batch. A torn or corrupt trailing record is cut off on load. The log is
//!   rewritten (atomically) with only the entries after the snapshot when a snapshot is taken
//!   or received.
//!
//! Unlike raft-rs' `MemStorage`, `Storage::snapshot` returns real state-machine data, so a
//! leader can bring a follower back from behind its compacted log.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::record;

const HARDSTATE_FILE: &str = "hardstate";
const SNAPSHOT_FILE: &str = "snapshot";
const LOG_FILE: &str = "log";

pub(crate) struct DiskStorage {
    dir: PathBuf,
    hard_state: HardState,
    /// The membership as of the applied index (the snapshot's, plus applied conf changes).
    conf_state: ConfState,
    snapshot: Snapshot,
    /// Contiguous entries after `snapshot.index`.
    entries: Vec<Entry>,
    /// `log`, opened for appending.
    log: File,
    /// Whether a `snapshot` file exists: a fresh directory has none until `initialize`.
    initialized: bool,
}

impl DiskStorage {
    /// Opens (creating if missing) the state directory and loads what it holds.
    pub(crate) fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create raft state dir {}", dir.display()))?;
        // 0700: the Raft log holds the cluster's state; only the daemon reads it.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 700 {}", dir.display()))?;
        let snap_bytes = record::read_single(&dir.join(SNAPSHOT_FILE)).context("read snapshot")?;
        let initialized = snap_bytes.is_some();
        let snapshot = match snap_bytes {
            Some(b) => Snapshot::parse_from_bytes(&b).context("decode snapshot")?,
            None => Snapshot::default(),
        };
        let mut hard_state = match record::read_single(&dir.join(HARDSTATE_FILE)).context("read hardstate")? {
            Some(b) => HardState::parse_from_bytes(&b).context("decode hardstate")?,
            None => HardState::default(),
        };

        let log_path = dir.join(LOG_FILE);
        let mut log = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        // The file may have just been created: make its name durable before trusting appends.
        record::sync_dir(dir).context("sync raft state dir")?;
        let mut buf = Vec::new();
        log.seek(SeekFrom::Start(0))
            .and_then(|_| log.read_to_end(&mut buf))
            .with_context(|| format!("read {}", log_path.display()))?;
        let (mut entries, valid_len) = replay_log(&buf)?;
        if valid_len < buf.len() {
            // A crash mid-append: the batch was never acknowledged, so dropping it is safe.
            // Cut it off, or later appends would sit behind garbage and be lost on next load.
            tracing::warn!(
                path = %log_path.display(),
                dropped_bytes = buf.len() - valid_len,
                "raft log ends with a torn or corrupt record; truncating it"
            );
            log.set_len(valid_len as u64)
                .and_then(|_| log.sync_all())
                .with_context(|| format!("truncate {}", log_path.display()))?;
        }

        let meta = snapshot.get_metadata();
        let trimmed = trim_to_snapshot(&mut entries, meta.index, meta.term)?;
        hard_state.term = hard_state.term.max(meta.term);
        hard_state.commit = hard_state.commit.max(meta.index);
        let last = entries.last().map_or(meta.index, |e| e.index);
        if hard_state.commit > last {
            // Forgetting that an entry is committed is safe (the leader says it again);
            // pointing past the log is not (raft-rs panics).
            tracing::warn!(commit = hard_state.commit, last, "commit index beyond the log; lowering it");
            hard_state.commit = last;
        }

        let mut storage = DiskStorage {
            dir: dir.to_path_buf(),
            conf_state: meta.get_conf_state().clone(),
            hard_state,
            snapshot,
            entries,
            log,
            initialized,
        };
        if trimmed {
            // Keep the file equal to memory, so later "truncate from index" records replay.
            storage.rewrite_log()?;
        }
        Ok(storage)
    }

    pub(crate) fn is_initialized(&self) -> bool {
        self.initialized
    }

    /// First start: records the membership and the initial state machine as a snapshot at
    /// index 0, so a restart before any compaction still knows the voters.
    pub(crate) fn initialize(&mut self, voters: Vec<u64>, data: Vec<u8>) -> anyhow::Result<()> {
        ensure!(!self.initialized, "raft storage is already initialized");
        let mut snap = Snapshot { data: data.into(), ..Default::default() };
        snap.mut_metadata().mut_conf_state().voters = voters;
        self.write_snapshot(&snap)?;
        self.conf_state = snap.get_metadata().get_conf_state().clone();
        self.snapshot = snap;
        self.initialized = true;
        Ok(())
    }

    pub(crate) fn snapshot_ref(&self) -> &Snapshot {
        &self.snapshot
    }

    pub(crate) fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    pub(crate) fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    #[cfg(test)]
    pub(crate) fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    fn first(&self) -> u64 {
        self.snapshot_index() + 1
    }

    fn last(&self) -> u64 {
        self.entries.last().map_or(self.snapshot_index(), |e| e.index)
    }

    /// Appends entries, replacing any at index >= the first one. Durable when it returns.
    pub(crate) fn append(&mut self, ents: &[Entry]) -> anyhow::Result<()> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        ensure!(
            first.index >= self.first(),
            "append at {} overwrites the snapshot (first index {})",
            first.index,
            self.first()
        );
        ensure!(first.index <= self.last() + 1, "append at {} leaves a gap after {}", first.index, self.last());
        ensure!(is_contiguous(ents), "append of non-contiguous entries at {}", first.index);
        let rec = record::frame(&encode_entries(ents)?).context("frame log record")?;
        self.log.write_all(&rec).and_then(|_| self.log.sync_data()).context("append to raft log")?;
        let keep = (first.index - self.first()) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(ents);
        Ok(())
    }

    pub(crate) fn set_hard_state(&mut self, hs: HardState) -> anyhow::Result<()> {
        let bytes = hs.write_to_bytes().context("encode hardstate")?;
        let rec = record::frame(&bytes).context("frame hardstate")?;
        record::write_atomic(&self.dir, HARDSTATE_FILE, &rec).context("write hardstate")?;
        self.hard_state = hs;
        Ok(())
    }

    pub(crate) fn set_commit(&mut self, commit: u64) -> anyhow::Result<()> {
        if commit == self.hard_state.commit {
            return Ok(());
        }
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(hs)
    }

    /// An applied conf change. It reaches disk with the next snapshot; until then a restart
    /// re-applies the entry.
    pub(crate) fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// Installs a snapshot received from the leader. raft-rs only sends one when our log does
    /// not hold its index and term, so every entry we hold is replaced.
    pub(crate) fn apply_snapshot(&mut self, snap: Snapshot) -> anyhow::Result<()> {
        let meta = snap.get_metadata();
        ensure!(
            meta.index > self.snapshot_index(),
            "received snapshot at {} is not newer than ours at {}",
            meta.index,
            self.snapshot_index()
        );
        self.write_snapshot(&snap)?;
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        self.conf_state = meta.get_conf_state().clone();
        self.snapshot = snap;
        self.entries.clear();
        self.rewrite_log()?;
        self.set_hard_state(hs)
    }

    /// Takes a snapshot at `index` (applied, so persisted) holding `data`, then drops the log
    /// up to it. Crash-safe in this order: a snapshot newer than the log's start is reconciled
    /// on load.
    pub(crate) fn compact(&mut self, index: u64, data: Vec<u8>) -> anyhow::Result<()> {
        ensure!(
            index > self.snapshot_index() && index <= self.last(),
            "compact to {} outside ({}, {}]",
            index,
            self.snapshot_index(),
            self.last()
        );
        let term = self.entry_term(index)?;
        let mut snap = Snapshot { data: data.into(), ..Default::default() };
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        self.write_snapshot(&snap)?;
        let drop = (index - self.first() + 1) as usize;
        self.entries.drain(..drop);
        self.snapshot = snap;
        self.rewrite_log()
    }

    fn entry_term(&self, idx: u64) -> anyhow::Result<u64> {
        if idx == self.snapshot_index() {
            return Ok(self.snapshot.get_metadata().term);
        }
        match self.entries.get(idx.wrapping_sub(self.first()) as usize) {
            Some(e) => Ok(e.term),
            None => bail!("no entry at {idx}"),
        }
    }

    fn write_snapshot(&self, snap: &Snapshot) -> anyhow::Result<()> {
        let bytes = snap.write_to_bytes().context("encode snapshot")?;
        let rec = record::frame(&bytes).context("frame snapshot")?;
        record::write_atomic(&self.dir, SNAPSHOT_FILE, &rec).context("write snapshot")
    }

    /// Replaces the log file with one record holding the in-memory entries.
    fn rewrite_log(&mut self) -> anyhow::Result<()> {
        let contents = if self.entries.is_empty() {
            Vec::new()
        } else {
            record::frame(&encode_entries(&self.entries)?).context("frame log record")?
        };
        record::write_atomic(&self.dir, LOG_FILE, &contents).context("rewrite raft log")?;
        self.log = OpenOptions::new().append(true).open(self.dir.join(LOG_FILE)).context("reopen raft log")?;
        Ok(())
    }
}

/// Replays the log's records. Returns the entries and how many bytes were intact.
fn replay_log(buf: &[u8]) -> anyhow::Result<(Vec<Entry>, usize)> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut pos = 0;
    while let Some((payload, used)) = record::next_record(&buf[pos..]) {
        // A record whose checksum holds but does not decode is not a torn write: fail loudly.
        let batch = decode_entries(payload).with_context(|| format!("log record at byte {pos}"))?;
        if let Some(first) = batch.first() {
            match entries.first() {
                Some(head) if first.index >= head.index => {
                    let last = entries.last().map_or(0, |e| e.index);
                    ensure!(
                        first.index <= last + 1,
                        "log record at byte {pos} starts at {} after {last}: gap",
                        first.index
                    );
                    entries.truncate((first.index - head.index) as usize);
                }
                _ => entries.clear(),
            }
            entries.extend(batch);
        }
        pos += used;
    }
    Ok((entries, pos))
}

/// Keeps only the entries that continue the snapshot (snapshot index `index`, term `term`).
/// Returns whether anything was dropped.
fn trim_to_snapshot(entries: &mut Vec<Entry>, index: u64, term: u64) -> anyhow::Result<bool> {
    let Some(head) = entries.first().map(|e| e.index) else {
        return Ok(false);
    };
    let last = entries.last().map_or(head, |e| e.index);
    if head > index + 1 {
        bail!("raft log starts at {head}, after the snapshot at {index}: entries are missing");
    }
    if head == index + 1 {
        return Ok(false);
    }
    // The log overlaps the snapshot (a crash between writing a snapshot and rewriting the log).
    // Entries after it are ours only if the log agrees with the snapshot at its index.
    if last >= index && entries[(index - head) as usize].term == term {
        entries.drain(..=(index - head) as usize);
    } else {
        entries.clear();
    }
    Ok(true)
}

fn is_contiguous(ents: &[Entry]) -> bool {
    ents.windows(2).all(|w| w[1].index == w[0].index + 1)
}

fn encode_entries(ents: &[Entry]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    for e in ents {
        let b = e.write_to_bytes().context("encode log entry")?;
        let len = u32::try_from(b.len()).context("log entry too large")?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&b);
    }
    Ok(out)
}

fn decode_entries(mut buf: &[u8]) -> anyhow::Result<Vec<Entry>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let len_bytes: [u8; 4] = buf.get(..4).and_then(|b| b.try_into().ok()).context("truncated entry length")?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        let body = buf.get(4..4 + len).context("truncated entry")?;
        out.push(Entry::parse_from_bytes(body).context("decode log entry")?);
        buf = &buf[4 + len..];
    }
    ensure!(is_contiguous(&out), "log record holds non-contiguous entries");
    Ok(out)
}

fn store_err(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.into()))
}

impl raft::Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(store_err(format!("entries [{low}, {high}) out of range [{}, {}]", self.first(), self.last())));
        }
        let lo = (low - self.first()) as usize;
        let hi = (high - self.first()) as usize;
        let mut ents = self.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot_index() {
            return Ok(self.snapshot.get_metadata().term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // The snapshot is taken when the log is compacted, so it always covers what the log no
        // longer has. `request_index` is only set by follower-requested snapshots (unused).
        if self.snapshot_index() < request_index {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
#[path = "storage_tests.rs"]
mod tests;
