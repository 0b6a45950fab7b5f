//! WAL positions as PostgreSQL prints them (`16/B374D848`: high and low 32 bits in hex).

/// Parse `"16/B374D848"` into a 64-bit position. `None` for anything else (including an empty string).
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let valid = |part: &str| (1..=8).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid(hi) || !valid(lo) {
        return None;
    }
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// The inverse of [`parse_lsn`], in PostgreSQL's own format.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postgres_format() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("0/3000148"), Some(0x300_0148));
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF"), Some(u64::MAX));
        assert_eq!(parse_lsn("a/b"), Some((0xa << 32) | 0xb));
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "/", "16/", "/B3", "16", "x/1", "1/x", "1/2/3", "100000000/0", "-1/0", "+1/0", "1 /2"] {
            assert_eq!(parse_lsn(s), None, "{s:?}");
        }
    }

    #[test]
    fn round_trips() {
        for lsn in [0, 1, 0x16_B374_D848, u64::MAX, 1 << 32] {
            assert_eq!(parse_lsn(&format_lsn(lsn)), Some(lsn));
        }
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
    }
}
