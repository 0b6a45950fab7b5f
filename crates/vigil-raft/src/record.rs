//! The on-disk framing shared by the raft log and the state files, and the fsync discipline.
//!
//! A record is `len: u32 LE | crc32(payload): u32 LE | payload`. A reader stops at the first
//! record that is short or fails its checksum: that is what a write torn by a crash looks like.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// Bytes before a record's payload.
pub(crate) const HEADER_LEN: usize = 8;

/// Refuse absurd lengths on read, so a corrupt length field is not an allocation request.
const MAX_RECORD_LEN: usize = 1 << 30;

const CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

/// CRC-32 (IEEE), the zlib/Ethernet one. Small enough to carry instead of a dependency.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// Frames `payload` as one record.
pub(crate) fn frame(payload: &[u8]) -> io::Result<Vec<u8>> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l as usize <= MAX_RECORD_LEN)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// The first record of `buf` and the bytes it took, or `None` if `buf` does not start with a
/// whole, intact record.
pub(crate) fn next_record(buf: &[u8]) -> Option<(&[u8], usize)> {
    let len = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
    if len > MAX_RECORD_LEN {
        return None;
    }
    let payload = buf.get(HEADER_LEN..HEADER_LEN + len)?;
    (crc32(payload) == crc).then_some((payload, HEADER_LEN + len))
}

/// Reads a file holding exactly one record. `Ok(None)` if the file does not exist; an error if
/// it is damaged (these files are replaced atomically, so damage is not a torn write).
pub(crate) fn read_single(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let buf = match fs::read(path) {
        Ok(buf) => buf,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match next_record(&buf) {
        Some((payload, used)) if used == buf.len() => Ok(Some(payload.to_vec())),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is damaged (bad length or checksum)", path.display()),
        )),
    }
}

/// Replaces `dir/name` with `contents` so that a crash leaves either the old or the new file:
/// write a temporary file, fsync it, rename it over, fsync the directory (the rename itself
/// is only durable once the directory is).
pub(crate) fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Makes directory entries (creates, renames) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn frame_round_trip_and_damage() {
        let rec = frame(b"hello").expect("frame");
        assert_eq!(next_record(&rec), Some((&b"hello"[..], rec.len())));
        assert_eq!(next_record(&rec[..rec.len() - 1]), None);
        let mut bad = rec.clone();
        bad[HEADER_LEN] ^= 1;
        assert_eq!(next_record(&bad), None);
        assert_eq!(next_record(&[]), None);
    }
}
