use super::*;

/// Read `stream` as the proxy does: [`FIRST_READ`] bytes, then exactly what [`parse`] asks for.
/// Returns the verdict and how many bytes were read (None: the stream ended first, truncated).
fn read(stream: &[u8]) -> (Option<Parsed>, usize) {
    let mut n = FIRST_READ.min(stream.len());
    loop {
        if n > stream.len() {
            return (None, stream.len());
        }
        match parse(&stream[..n]) {
            Parsed::Need(more) => {
                assert!(more > 0, "asked for nothing more at {n}");
                n += more;
            }
            done => return (Some(done), n),
        }
    }
}

/// A PostgreSQL startup packet (protocol 3.0, user postgres): what follows a header.
fn startup() -> Vec<u8> {
    let body = b"\0\x03\0\0user\0postgres\0\0";
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(body);
    p
}

fn with_startup(header: &[u8]) -> Vec<u8> {
    let mut s = header.to_vec();
    s.extend(startup());
    s
}

fn addr(s: &str) -> Option<SocketAddr> {
    Some(s.parse().expect("a socket address"))
}

fn done(version: u8, source: &str, destination: &str, len: usize) -> Option<Parsed> {
    Some(Parsed::Done { header: Header { version, source: addr(source), destination: addr(destination) }, len })
}

#[test]
fn version_1_tcp4_and_tcp6_carry_the_client_and_stop_at_the_line_end() {
    let h = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 6432\r\n";
    let (verdict, read_n) = read(&with_startup(h));
    assert_eq!(verdict, done(1, "192.0.2.7:51234", "10.0.0.1:6432", h.len()));
    // Not one byte of PostgreSQL's was read.
    assert_eq!(read_n, h.len());

    let h = b"PROXY TCP6 2001:db8::7 ::1 65535 6432\r\n";
    let (verdict, read_n) = read(&with_startup(h));
    assert_eq!(verdict, done(1, "[2001:db8::7]:65535", "[::1]:6432", h.len()));
    assert_eq!(read_n, h.len());
}

#[test]
fn version_1_unknown_carries_nothing() {
    for h in [&b"PROXY UNKNOWN\r\n"[..], b"PROXY UNKNOWN ff::1 ::1 1 2\r\n"] {
        let (verdict, read_n) = read(&with_startup(h));
        assert_eq!(
            verdict,
            Some(Parsed::Done { header: Header { version: 1, source: None, destination: None }, len: h.len() })
        );
        assert_eq!(read_n, h.len());
    }
}

#[test]
fn version_1_malformed_lines_are_refused() {
    for (h, why) in [
        (&b"PROXY TCP4 192.0.2.7 10.0.0.1 51234\r\n"[..], "not 5 fields separated by single spaces"),
        (b"PROXY TCP4  192.0.2.7 10.0.0.1 1 2\r\n", "not 5 fields separated by single spaces"),
        (b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n", "an address not of the protocol's family"),
        (b"PROXY TCP6 192.0.2.7 ::1 1 2\r\n", "an address not of the protocol's family"),
        (b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 2\r\n", "a port is not a number from 0 to 65535"),
        (b"PROXY TCP4 192.0.2.7 10.0.0.1 +1 2\r\n", "a port is not a number from 0 to 65535"),
        (b"PROXY TCP4 192.0.2.7 10.0.0.1 01 2\r\n", "a port is not a number from 0 to 65535"),
        (b"PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n", "protocol is not TCP4, TCP6 or UNKNOWN"),
        (b"PROXY TCP4 192.0.2.\xff 10.0.0.1 1 2\r\n", "not ASCII"),
    ] {
        assert_eq!(
            read(&with_startup(h)).0,
            Some(Parsed::Bad(BadHeader::Malformed(why))),
            "{}",
            String::from_utf8_lossy(h)
        );
    }
}

#[test]
fn version_1_without_a_line_end_within_107_bytes_is_too_long() {
    let mut h = b"PROXY TCP4 ".to_vec();
    h.extend(std::iter::repeat_n(b'1', 200));
    let (verdict, read_n) = read(&h);
    assert_eq!(verdict, Some(Parsed::Bad(BadHeader::TooLong)));
    assert!(read_n <= MAX_V1, "read {read_n} bytes");
    // Exactly 107 bytes with the line end is the longest accepted.
    let long =
        "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_eq!(long.len(), 104);
    assert!(matches!(read(long.as_bytes()).0, Some(Parsed::Done { len: 104, .. })));
}

fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(ver_cmd);
    h.push(fam);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(body);
    h
}

#[test]
fn version_2_ipv4_and_ipv6_carry_the_client_tlvs_included() {
    let mut body = vec![192, 0, 2, 7, 10, 0, 0, 1];
    body.extend(51234u16.to_be_bytes());
    body.extend(6432u16.to_be_bytes());
    // A TLV (PP2_TYPE_AUTHORITY, "db"): skipped, but part of the header.
    body.extend([0x02, 0, 2, b'd', b'b']);
    let h = v2(0x21, 0x11, &body);
    let (verdict, read_n) = read(&with_startup(&h));
    assert_eq!(verdict, done(2, "192.0.2.7:51234", "10.0.0.1:6432", h.len()));
    assert_eq!(read_n, h.len());

    let src: std::net::Ipv6Addr = "2001:db8::7".parse().expect("an address");
    let dst: std::net::Ipv6Addr = "::1".parse().expect("an address");
    let mut body = src.octets().to_vec();
    body.extend(dst.octets());
    body.extend(40000u16.to_be_bytes());
    body.extend(6432u16.to_be_bytes());
    let h = v2(0x21, 0x21, &body);
    let (verdict, read_n) = read(&with_startup(&h));
    assert_eq!(verdict, done(2, "[2001:db8::7]:40000", "[::1]:6432", h.len()));
    assert_eq!(read_n, h.len());
}

#[test]
fn version_2_local_and_unspec_and_unix_carry_nothing() {
    let none = |len| Some(Parsed::Done { header: Header { version: 2, source: None, destination: None }, len });
    // LOCAL (a health check of the load balancer), no addresses.
    let h = v2(0x20, 0x00, &[]);
    assert_eq!(read(&with_startup(&h)), (none(16), 16));
    // LOCAL with IPv4 addresses: they are ignored.
    let h = v2(0x20, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
    assert_eq!(read(&with_startup(&h)).0, none(28));
    // PROXY with AF_UNSPEC, or AF_UNIX: the connection's own address stands.
    assert_eq!(read(&v2(0x21, 0x00, &[])).0, none(16));
    assert_eq!(read(&v2(0x21, 0x31, &[0u8; 216])).0, none(232));
}

#[test]
fn version_2_malformed_and_oversized_headers_are_refused() {
    let bad = |why| Some(Parsed::Bad(BadHeader::Malformed(why)));
    assert_eq!(read(&v2(0x11, 0x11, &[0u8; 12])).0, bad("version 2 signature with another version"));
    assert_eq!(read(&v2(0x22, 0x11, &[0u8; 12])).0, bad("unknown command"));
    assert_eq!(read(&v2(0x21, 0x41, &[0u8; 12])).0, bad("unknown address family"));
    assert_eq!(read(&v2(0x21, 0x11, &[0u8; 11])).0, bad("addresses shorter than their family"));
    assert_eq!(read(&v2(0x21, 0x21, &[0u8; 12])).0, bad("addresses shorter than their family"));
    // Oversized: refused from the 16 bytes, before reading the body.
    let h = v2(0x21, 0x11, &vec![0u8; MAX_HEADER - 15]);
    assert_eq!(read(&h), (Some(Parsed::Bad(BadHeader::TooLong)), 16));
    // The largest accepted.
    let h = v2(0x21, 0x11, &vec![0u8; MAX_HEADER - 16]);
    assert!(matches!(read(&h).0, Some(Parsed::Done { len: MAX_HEADER, .. })));
}

#[test]
fn truncated_headers_ask_for_more_and_never_past_the_end() {
    let h4 = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 6432\r\n".to_vec();
    let mut body = vec![192, 0, 2, 7, 10, 0, 0, 1, 0, 1, 0, 2];
    body.extend([0x04, 0, 1, 0]);
    let h2 = v2(0x21, 0x11, &body);
    for h in [h4, h2] {
        // Every prefix asks for more (the stream ended: truncated), never judges.
        for cut in 0..h.len() {
            assert_eq!(read(&h[..cut]).0, None, "cut at {cut}");
            assert!(matches!(parse(&h[..cut]), Parsed::Need(n) if cut + n <= h.len()), "cut at {cut}");
        }
    }
}

#[test]
fn postgresql_bytes_and_garbage_are_no_header() {
    // A startup packet, an SSLRequest, a CancelRequest: what a client without a header sends.
    assert_eq!(read(&startup()).0, Some(Parsed::Bad(BadHeader::Missing)));
    let ssl = [0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f];
    assert_eq!(parse(&ssl), Parsed::Bad(BadHeader::Missing));
    assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Bad(BadHeader::Missing));
    assert_eq!(parse(b"proxy tcp4 1.2.3.4 "), Parsed::Bad(BadHeader::Missing));
    // A signature's first 8 bytes, then something else.
    let mut almost = V2_SIGNATURE.to_vec();
    almost[10] = b'X';
    almost.extend([0x21, 0x11, 0, 0]);
    assert_eq!(parse(&almost), Parsed::Bad(BadHeader::Missing));
    assert_eq!(BadHeader::Missing.reason(), "proxy_header_missing");
}

#[test]
fn cidrs_parse_strictly_and_match_their_network() {
    let c = |s: &str| s.parse::<Cidr>();
    let ip = |s: &str| s.parse::<IpAddr>().expect("an address");
    let ten = c("10.0.0.0/8").expect("a network");
    assert!(ten.contains(ip("10.255.1.2")));
    assert!(!ten.contains(ip("11.0.0.1")));
    // What a dual-stack listener sees of an IPv4 client.
    assert!(ten.contains(ip("::ffff:10.1.2.3")));
    assert!(!ten.contains(ip("::1")));
    let one = c("127.0.0.1/32").expect("a network");
    assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
    assert_eq!(c("127.0.0.1"), Ok(one));
    assert!(c("0.0.0.0/0").expect("a network").contains(ip("203.0.113.9")));
    assert!(!c("0.0.0.0/0").expect("a network").contains(ip("2001:db8::1")));
    let v6 = c("2001:db8::/32").expect("a network");
    assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
    assert!(c("::/0").expect("a network").contains(ip("::1")));
    assert!(c("::1/128").expect("a network").contains(ip("::1")));
    for bad in ["10.0.0.0/33", "10.0.0.1/8", "10.0.0.0/", "10.0.0.0/+8", "host/8", "", "::1/129", "10.0.0.0/8/8"] {
        assert!(c(bad).is_err(), "{bad:?} accepted");
    }
}
