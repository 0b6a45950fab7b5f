//! The PROXY protocol header (HAProxy's, versions 1 and 2) a load balancer in front of the routing
//! proxy may send before the client's bytes, carrying the client's address; and the trusted
//! sources (`proxy.proxy_protocol_from`) whose connections must start with one. Pure: bytes in,
//! a verdict out.
//!
//! The reader never reads past the header: [`parse`] says how many more bytes are certainly part
//! of it ([`Parsed::Need`]), so the session reads exactly those and the PostgreSQL bytes after the
//! header stay in the socket. A header is at most [`MAX_HEADER`] bytes (version 1: 107, as the
//! specification says; version 2: 16 + its length, type-length-values included).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Version 2's 12-byte signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 line, `\r\n` included.
pub const MAX_V1: usize = 107;
/// The longest header accepted (version 2: 16 bytes and up to 4080 of addresses and TLVs).
pub const MAX_HEADER: usize = 4096;

/// A complete header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// 1 or 2.
    pub version: u8,
    /// The client's address, if the header carries one. None for version 1's `UNKNOWN`, version
    /// 2's `LOCAL` command (the load balancer's own connection, a health check) and families
    /// without an IP address: the connection's own peer address stands.
    pub source: Option<SocketAddr>,
    /// The address the client connected to (the load balancer's), if carried.
    pub destination: Option<SocketAddr>,
}

/// What the bytes read so far are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A header of `len` bytes (the bytes after it are the client's own).
    Done { header: Header, len: usize },
    /// Read exactly this many more bytes: they are certainly still part of the header.
    Need(usize),
    /// Not a valid header.
    Bad(BadHeader),
}

/// Why the bytes are not a valid header (the `reason` label of a refusal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadHeader {
    /// Neither signature: the client sent no header (PostgreSQL's bytes, most likely).
    Missing,
    /// A signature, then something the specification does not allow.
    Malformed(&'static str),
    /// Longer than [`MAX_V1`] or [`MAX_HEADER`].
    TooLong,
}

impl BadHeader {
    pub fn reason(&self) -> &'static str {
        match self {
            BadHeader::Missing => "proxy_header_missing",
            BadHeader::Malformed(_) => "proxy_header_malformed",
            BadHeader::TooLong => "proxy_header_too_long",
        }
    }

    pub fn message(&self) -> String {
        match self {
            BadHeader::Missing => "no PROXY protocol header".into(),
            BadHeader::Malformed(why) => format!("a malformed PROXY protocol header: {why}"),
            BadHeader::TooLong => format!("a PROXY protocol header longer than {MAX_HEADER} bytes"),
        }
    }
}

/// How many bytes to read first: both headers are longer (version 1's shortest, `PROXY
/// UNKNOWN\r\n`, is 15 bytes), and 8 tell them apart.
pub const FIRST_READ: usize = 8;

const V1_PREFIX: &[u8] = b"PROXY ";

/// Judge the first bytes of a connection (at least [`FIRST_READ`] of them; fewer: Need).
pub fn parse(buf: &[u8]) -> Parsed {
    if buf.len() < FIRST_READ {
        return Parsed::Need(FIRST_READ - buf.len());
    }
    if buf.starts_with(&V2_SIGNATURE[..FIRST_READ]) {
        parse_v2(buf)
    } else if buf.starts_with(&V1_PREFIX[..FIRST_READ.min(V1_PREFIX.len())]) {
        parse_v1(buf)
    } else {
        Parsed::Bad(BadHeader::Missing)
    }
}

fn parse_v2(buf: &[u8]) -> Parsed {
    if buf.len() < 16 {
        return Parsed::Need(16 - buf.len());
    }
    if buf[..12] != V2_SIGNATURE {
        return Parsed::Bad(BadHeader::Missing);
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    if ver_cmd >> 4 != 2 {
        return Parsed::Bad(BadHeader::Malformed("version 2 signature with another version"));
    }
    let body = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let len = 16 + body;
    if len > MAX_HEADER {
        return Parsed::Bad(BadHeader::TooLong);
    }
    if buf.len() < len {
        return Parsed::Need(len - buf.len());
    }
    let body = &buf[16..len];
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Parsed::Bad(BadHeader::Malformed("unknown command")),
    };
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let addrs = match fam >> 4 {
        // AF_INET: 4 + 4 + 2 + 2.
        1 if body.len() >= 12 => {
            let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            Some((
                SocketAddr::new(ip(&body[0..4]), port(&body[8..10])),
                SocketAddr::new(ip(&body[4..8]), port(&body[10..12])),
            ))
        }
        // AF_INET6: 16 + 16 + 2 + 2.
        2 if body.len() >= 36 => {
            let ip = |b: &[u8]| {
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                IpAddr::V6(Ipv6Addr::from(a))
            };
            Some((
                SocketAddr::new(ip(&body[0..16]), port(&body[32..34])),
                SocketAddr::new(ip(&body[16..32]), port(&body[34..36])),
            ))
        }
        1 | 2 if !local => return Parsed::Bad(BadHeader::Malformed("addresses shorter than their family")),
        // AF_UNSPEC, AF_UNIX, or LOCAL with short addresses: nothing usable is carried.
        0..=3 => None,
        _ => return Parsed::Bad(BadHeader::Malformed("unknown address family")),
    };
    // LOCAL: the load balancer speaks for itself; whatever addresses follow are ignored.
    let (source, destination) = match addrs {
        Some((s, d)) if !local => (Some(s), Some(d)),
        _ => (None, None),
    };
    Parsed::Done { header: Header { version: 2, source, destination }, len }
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let end = match buf.windows(2).position(|w| w == b"\r\n") {
        Some(i) => i,
        None if buf.len() >= MAX_V1 => return Parsed::Bad(BadHeader::TooLong),
        // The line ends with `\r\n`: two more bytes are certainly part of it, one if `\r` is in.
        None if buf.ends_with(b"\r") => return Parsed::Need(1),
        None => return Parsed::Need(2.min(MAX_V1 - buf.len())),
    };
    let len = end + 2;
    if len > MAX_V1 {
        return Parsed::Bad(BadHeader::TooLong);
    }
    let Ok(line) = std::str::from_utf8(&buf[..end]) else {
        return Parsed::Bad(BadHeader::Malformed("not ASCII"));
    };
    let Some(rest) = line.strip_prefix("PROXY ") else {
        return Parsed::Bad(BadHeader::Malformed("no `PROXY ` prefix"));
    };
    let fields: Vec<&str> = rest.split(' ').collect();
    let v4 = match fields.first() {
        // Whatever follows UNKNOWN is ignored.
        Some(&"UNKNOWN") => {
            return Parsed::Done { header: Header { version: 1, source: None, destination: None }, len }
        }
        Some(&"TCP4") => true,
        Some(&"TCP6") => false,
        _ => return Parsed::Bad(BadHeader::Malformed("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let [_, src, dst, sport, dport] = fields[..] else {
        return Parsed::Bad(BadHeader::Malformed("not 5 fields separated by single spaces"));
    };
    let ip = |s: &str| -> Option<IpAddr> {
        if v4 {
            s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
        } else {
            s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
        }
    };
    // Decimal, no sign, no leading zero (the specification's form).
    let port = |s: &str| -> Option<u16> {
        let plain = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
        plain.then(|| s.parse().ok()).flatten()
    };
    match (ip(src), ip(dst), port(sport), port(dport)) {
        (Some(s), Some(d), Some(sp), Some(dp)) => Parsed::Done {
            header: Header {
                version: 1,
                source: Some(SocketAddr::new(s, sp)),
                destination: Some(SocketAddr::new(d, dp)),
            },
            len,
        },
        (None, _, _, _) | (_, None, _, _) => {
            Parsed::Bad(BadHeader::Malformed("an address not of the protocol's family"))
        }
        _ => Parsed::Bad(BadHeader::Malformed("a port is not a number from 0 to 65535")),
    }
}

/// A network in CIDR notation (`10.0.0.0/8`, `::1/128`); a bare address is a /32 or /128.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("{s:?}: {addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("{s:?}: the prefix length must be a number from 0 to {max}")),
            },
        };
        let cidr = Cidr { addr, prefix };
        if cidr.network() != addr {
            return Err(format!("{s:?}: host bits are set (the network is {}/{prefix})", cidr.network()));
        }
        Ok(cidr)
    }
}

impl Cidr {
    fn bits(addr: IpAddr) -> u128 {
        match addr {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        }
    }

    fn mask(&self) -> u128 {
        let width: u32 = if self.addr.is_ipv4() { 32 } else { 128 };
        let all = if width == 128 { u128::MAX } else { (1u128 << width) - 1 };
        match width - u32::from(self.prefix) {
            128 => 0,
            host_bits => all & !((1u128 << host_bits) - 1),
        }
    }

    fn network(&self) -> IpAddr {
        let bits = Cidr::bits(self.addr) & self.mask();
        match self.addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(bits as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(bits)),
        }
    }

    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address (`::ffff:10.1.2.3`, what a
    /// dual-stack listener sees) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && Cidr::bits(ip) & self.mask() == Cidr::bits(self.addr) & self.mask()
    }
}

#[cfg(test)]
#[path = "proxy_header_tests.rs"]
mod tests;
