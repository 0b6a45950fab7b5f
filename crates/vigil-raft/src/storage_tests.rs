#![allow(clippy::unwrap_used)]

use std::io::Write;

use raft::eraftpb::{Entry, HardState};
use raft::{GetEntriesContext, Storage, StorageError};

use super::*;

fn ent(index: u64, term: u64) -> Entry {
    Entry { index, term, data: format!("cmd-{index}-{term}").into_bytes().into(), ..Default::default() }
}

fn ents(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| ent(i, term)).collect()
}

fn all(s: &DiskStorage) -> Vec<Entry> {
    let (lo, hi) = (s.first_index().unwrap(), s.last_index().unwrap() + 1);
    s.entries(lo, hi, None, GetEntriesContext::empty(false)).unwrap()
}

fn fresh(dir: &Path) -> DiskStorage {
    let mut s = DiskStorage::open(dir).unwrap();
    assert!(!s.is_initialized());
    s.initialize(vec![1, 2, 3], b"init".to_vec()).unwrap();
    s
}

/// Everything a restart sees must equal what was written.
fn assert_same(a: &DiskStorage, b: &DiskStorage) {
    assert_eq!(a.initial_state().unwrap().hard_state, b.initial_state().unwrap().hard_state);
    assert_eq!(a.initial_state().unwrap().conf_state, b.initial_state().unwrap().conf_state);
    assert_eq!(a.snapshot_ref(), b.snapshot_ref());
    assert_eq!(all(a), all(b));
    assert_eq!(a.first_index().unwrap(), b.first_index().unwrap());
    assert_eq!(a.last_index().unwrap(), b.last_index().unwrap());
}

#[test]
fn fresh_storage_is_empty_with_voters() {
    let dir = tempfile::tempdir().unwrap();
    let s = fresh(dir.path());
    assert_eq!(s.first_index().unwrap(), 1);
    assert_eq!(s.last_index().unwrap(), 0);
    assert_eq!(s.term(0).unwrap(), 0);
    assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
    let again = DiskStorage::open(dir.path()).unwrap();
    assert!(again.is_initialized());
    assert_eq!(again.snapshot_ref().get_data(), b"init");
    assert_same(&s, &again);
}

#[test]
fn append_overwrite_suffix_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = fresh(dir.path());
    s.append(&ents(1..=5, 1)).unwrap();
    s.append(&ents(6..=7, 1)).unwrap();
    // A new leader replaces the uncommitted suffix from 4 on.
    s.append(&ents(4..=5, 2)).unwrap();
    let got = all(&s);
    assert_eq!(got.len(), 5);
    assert_eq!(got[2], ent(3, 1));
    assert_eq!(got[3], ent(4, 2));
    assert_eq!(s.last_index().unwrap(), 5);
    assert_eq!(s.term(5).unwrap(), 2);
    assert!(matches!(s.term(6), Err(raft::Error::Store(StorageError::Unavailable))));

    let hs = HardState { term: 2, vote: 3, commit: 4, ..Default::default() };
    s.set_hard_state(hs.clone()).unwrap();
    s.set_commit(5).unwrap();

    let back = DiskStorage::open(dir.path()).unwrap();
    assert_same(&s, &back);
    assert_eq!(back.hard_state().commit, 5);
    assert_eq!(back.hard_state().vote, 3);
}

#[test]
fn append_rejects_gaps_and_compacted_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = fresh(dir.path());
    s.append(&ents(1..=3, 1)).unwrap();
    assert!(s.append(&ents(5..=6, 1)).is_err());
    s.compact(2, b"two".to_vec()).unwrap();
    assert!(s.append(&ents(2..=4, 2)).is_err());
    assert_eq!(all(&s), ents(3..=3, 1));
}

#[test]
fn entries_respect_bounds_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = fresh(dir.path());
    s.append(&ents(1..=5, 1)).unwrap();
    let ctx = || GetEntriesContext::empty(false);
    assert_eq!(s.entries(2, 4, None, ctx()).unwrap(), ents(2..=3, 1));
    // At least one entry, even past the size limit.
    assert_eq!(s.entries(2, 4, Some(1), ctx()).unwrap(), ents(2..=2, 1));
    assert!(s.entries(2, 7, None, ctx()).is_err());
    s.compact(3, b"three".to_vec()).unwrap();
    assert!(matches!(s.entries(3, 5, None, ctx()), Err(raft::Error::Store(StorageError::Compacted))));
    assert!(matches!(s.term(2), Err(raft::Error::Store(StorageError::Compacted))));
    assert_eq!(s.term(3).unwrap(), 1);
}

#[test]
fn compact_takes_snapshot_and_survives_reload() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = fresh(dir.path());
    s.append(&ents(1..=4, 1)).unwrap();
    s.append(&ents(5..=8, 2)).unwrap();
    // Only applied (so committed) entries are ever compacted.
    let hs = HardState { term: 2, commit: 8, ..Default::default() };
    s.set_hard_state(hs).unwrap();
    s.compact(6, b"state@6".to_vec()).unwrap();
    assert_eq!(s.first_index().unwrap(), 7);
    assert_eq!(s.last_index().unwrap(), 8);
    let snap = s.snapshot(0, 2).unwrap();
    assert_eq!(snap.get_metadata().index, 6);
    assert_eq!(snap.get_metadata().term, 2);
    assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2, 3]);
    assert_eq!(snap.get_data(), b"state@6");
    assert!(matches!(s.snapshot(7, 2), Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))));
    s.append(&ents(9..=9, 2)).unwrap();

    let back = DiskStorage::open(dir.path()).unwrap();
    assert_same(&s, &back);
    assert_eq!(all(&back), ents(7..=9, 2));
}

#[test]
fn received_snapshot_replaces_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = fresh(dir.path());
    s.append(&ents(1..=3, 1)).unwrap();
    let mut snap = Snapshot { data: b"leader state".to_vec().into(), ..Default::default() };
    snap.mut_metadata().index = 10;
    snap.mut_metadata().term = 4;
    snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    s.apply_snapshot(snap.clone()).unwrap();
    assert_eq!(s.first_index().unwrap(), 11);
    assert_eq!(s.last_index().unwrap(), 10);
    assert_eq!(s.term(10).unwrap(), 4);
    assert_eq!(s.hard_state().commit, 10);
    assert_eq!(s.hard_state().term, 4);
    s.append(&ents(11..=12, 4)).unwrap();
    // Not newer than what we hold: refused.
    assert!(s.apply_snapshot(snap).is_err());

    let back = DiskStorage::open(dir.path()).unwrap();
    assert_same(&s, &back);
    assert_eq!(all(&back), ents(11..=12, 4));
}

#[test]
fn torn_trailing_record_is_ignored_and_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = fresh(dir.path());
    s.append(&ents(1..=3, 1)).unwrap();
    s.append(&ents(4..=5, 1)).unwrap();
    drop(s);
    let path = dir.path().join(LOG_FILE);
    let full = std::fs::read(&path).unwrap();

    // A crash in the middle of writing a third record.
    let rec = record::frame(&encode_entries(&ents(6..=7, 1)).unwrap()).unwrap();
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&rec[..rec.len() / 2]).unwrap();
    drop(f);

    let mut back = DiskStorage::open(dir.path()).unwrap();
    assert_eq!(all(&back), ents(1..=5, 1));
    assert_eq!(std::fs::read(&path).unwrap(), full, "torn tail is cut off");
    // Appends after recovery are found on the next load.
    back.append(&ents(6..=6, 2)).unwrap();
    drop(back);
    let again = DiskStorage::open(dir.path()).unwrap();
    assert_eq!(again.last_index().unwrap(), 6);
    assert_eq!(again.term(6).unwrap(), 2);
}

#[test]
fn corrupt_trailing_record_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = fresh(dir.path());
    s.append(&ents(1..=3, 1)).unwrap();
    s.append(&ents(4..=5, 1)).unwrap();
    drop(s);
    let path = dir.path().join(LOG_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let back = DiskStorage::open(dir.path()).unwrap();
    assert_eq!(all(&back), ents(1..=3, 1));
}

#[test]
fn snapshot_written_but_log_not_rewritten_is_reconciled() {
    // Simulates a crash between writing a snapshot and rewriting the log.
    let dir = tempfile::tempdir().unwrap();
    let mut s = fresh(dir.path());
    s.append(&ents(1..=6, 1)).unwrap();
    let old_log = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
    s.compact(4, b"four".to_vec()).unwrap();
    drop(s);
    std::fs::write(dir.path().join(LOG_FILE), &old_log).unwrap();
    let back = DiskStorage::open(dir.path()).unwrap();
    assert_eq!(back.first_index().unwrap(), 5);
    assert_eq!(all(&back), ents(5..=6, 1));

    // A received snapshot whose term disagrees with the log: nothing of the log survives.
    let dir = tempfile::tempdir().unwrap();
    let mut s = fresh(dir.path());
    s.append(&ents(1..=6, 1)).unwrap();
    let old_log = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 4;
    snap.mut_metadata().term = 3;
    snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    s.apply_snapshot(snap).unwrap();
    drop(s);
    std::fs::write(dir.path().join(LOG_FILE), &old_log).unwrap();
    let mut back = DiskStorage::open(dir.path()).unwrap();
    assert_eq!(back.last_index().unwrap(), 4);
    assert!(all(&back).is_empty());
    back.append(&ents(5..=5, 3)).unwrap();
    drop(back);
    assert_eq!(all(&DiskStorage::open(dir.path()).unwrap()), ents(5..=5, 3));
}

#[test]
fn damaged_hardstate_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = fresh(dir.path());
    s.set_hard_state(HardState::default()).unwrap();
    drop(s);
    std::fs::write(dir.path().join(HARDSTATE_FILE), b"garbage!!").unwrap();
    assert!(DiskStorage::open(dir.path()).is_err());
}
