//! PostgreSQL's wire protocol as far as the routing proxy looks at it: what a client's first 8
//! bytes are, and the ErrorResponse a refused session is answered with. Pure: bytes in, bytes out.
//!
//! A client's first packet is `int32 length, int32 code`: a CancelRequest (16 bytes), an
//! SSLRequest or GSSENCRequest (8 bytes, answered by one byte, `S`/`G` or `N`), or a startup
//! packet (protocol 3.x, user and database names; at most 10 000 bytes, as PostgreSQL allows).
//! A server refuses a session after the startup packet with an ErrorResponse of severity FATAL;
//! the proxy does the same, so the client reports why (`psql: ... FATAL: ...`, SQLSTATE `57P03`
//! or `53300`) instead of "server closed the connection unexpectedly".

/// The code of a CancelRequest (`1234 5678` in the two halves).
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// PostgreSQL refuses longer startup packets (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: usize = 10_000;

/// SQLSTATE `cannot_connect_now`: no server may take the session now (no primary within the hold,
/// no standby, the backend unreachable).
pub const CANNOT_CONNECT_NOW: &str = "57P03";
/// SQLSTATE `too_many_connections`: the backend is at its session limit.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// SQLSTATE `protocol_violation`: a connection from a trusted network without its PROXY protocol
/// header.
pub const PROTOCOL_VIOLATION: &str = "08P01";

/// What a client's first 8 bytes announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum First {
    /// A CancelRequest: 8 more bytes (the process id and the key) follow.
    Cancel,
    /// An SSLRequest: the client waits for one byte.
    SslRequest,
    /// A GSSENCRequest: the client waits for one byte.
    GssEncRequest,
    /// A startup packet of `len` bytes in all (8 of them read).
    Startup { len: usize },
    /// Not PostgreSQL's protocol (a length out of bounds).
    Bad,
}

/// Classify a connection's first 8 bytes.
pub fn classify(first8: &[u8; 8]) -> First {
    let len = u32::from_be_bytes([first8[0], first8[1], first8[2], first8[3]]) as usize;
    let code = u32::from_be_bytes([first8[4], first8[5], first8[6], first8[7]]);
    match (len, code) {
        (16, CANCEL_REQUEST_CODE) => First::Cancel,
        (8, SSL_REQUEST_CODE) => First::SslRequest,
        (8, GSSENC_REQUEST_CODE) => First::GssEncRequest,
        (_, CANCEL_REQUEST_CODE | SSL_REQUEST_CODE | GSSENC_REQUEST_CODE) => First::Bad,
        (9..=MAX_STARTUP_LEN, _) => First::Startup { len },
        _ => First::Bad,
    }
}

/// An ErrorResponse of severity FATAL with `sqlstate` and `message` (NUL bytes in the message are
/// dropped: they would end the field).
pub fn fatal(sqlstate: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(32 + message.len());
    for (field, value) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', sqlstate), (b'M', message)] {
        body.push(field);
        body.extend(value.bytes().filter(|b| *b != 0));
        body.push(0);
    }
    body.push(0);
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(b'E');
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(len: u32, code: u32) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&len.to_be_bytes());
        b[4..].copy_from_slice(&code.to_be_bytes());
        b
    }

    #[test]
    fn first_packets_are_told_apart() {
        assert_eq!(classify(&first(16, CANCEL_REQUEST_CODE)), First::Cancel);
        assert_eq!(classify(&first(8, SSL_REQUEST_CODE)), First::SslRequest);
        assert_eq!(classify(&first(8, GSSENC_REQUEST_CODE)), First::GssEncRequest);
        // Protocol 3.0 startup.
        assert_eq!(classify(&first(41, 196_608)), First::Startup { len: 41 });
        assert_eq!(classify(&first(10_000, 196_608)), First::Startup { len: 10_000 });
        assert_eq!(classify(&first(10_001, 196_608)), First::Bad);
        assert_eq!(classify(&first(8, 196_608)), First::Bad);
        assert_eq!(classify(&first(12, SSL_REQUEST_CODE)), First::Bad);
        assert_eq!(classify(&first(0, 0)), First::Bad);
    }

    #[test]
    fn a_fatal_error_is_framed_as_postgresql_frames_it() {
        let e = fatal("57P03", "no primary");
        assert_eq!(e[0], b'E');
        let len = u32::from_be_bytes([e[1], e[2], e[3], e[4]]) as usize;
        assert_eq!(len, e.len() - 1);
        assert_eq!(&e[5..], b"SFATAL\0VFATAL\0C57P03\0Mno primary\0\0");
        // A NUL in the message cannot cut the frame short.
        let e = fatal("53300", "a\0b");
        assert!(e.ends_with(b"Mab\0\0"));
    }
}
