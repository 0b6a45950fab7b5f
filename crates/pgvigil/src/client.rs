//! A small HTTP/1.1 client for the member API, plain or over TLS (the CLI and the tests use it).

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;

/// An answer: the status, the body, and the body as JSON when it is JSON (else `Null`).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub text: String,
    pub json: serde_json::Value,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `message` of a JSON answer, else the text.
    pub fn message(&self) -> String {
        self.json.get("message").and_then(|m| m.as_str()).map(str::to_string).unwrap_or_else(|| self.text.clone())
    }
}

/// A member's HTTP API: where it is, and for https the TLS client configuration (the CA to
/// trust, and the certificate to present if the API asks for one).
#[derive(Clone)]
pub struct Api {
    authority: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url())
    }
}

/// The scheme (if given) and `host:port` of `host:port`, `http://host:port[/]` or
/// `https://host:port[/]`.
pub fn parse_endpoint(endpoint: &str) -> anyhow::Result<(Option<&str>, &str)> {
    let (scheme, rest) = match endpoint.split_once("://") {
        Some((s @ ("http" | "https"), rest)) => (Some(s), rest),
        Some((s, _)) => anyhow::bail!("{endpoint:?}: unknown scheme {s:?} (http or https)"),
        None => (None, endpoint),
    };
    let a = rest.trim_end_matches('/');
    anyhow::ensure!(
        a.contains(':') && !a.contains('/'),
        "{endpoint:?} is not host:port, http://host:port or https://host:port"
    );
    Ok((scheme, a))
}

impl Api {
    /// `endpoint` as [`parse_endpoint`] takes it. `https` needs `tls`; a bare `host:port` is
    /// https when `tls` is given, else http; an explicit `http://` is plain text either way.
    pub fn new(endpoint: &str, tls: Option<Arc<rustls::ClientConfig>>) -> anyhow::Result<Api> {
        let (scheme, authority) = parse_endpoint(endpoint)?;
        let tls = match scheme {
            Some("http") => None,
            Some(_) if tls.is_none() => {
                anyhow::bail!("{endpoint}: https needs the CA to trust (--cacert, or --config with a [tls] table)")
            }
            _ => tls,
        };
        Ok(Api { authority: authority.to_string(), tls })
    }

    /// Plain http to `host:port` (or an `http://` URL).
    pub fn plain(endpoint: &str) -> anyhow::Result<Api> {
        Api::new(endpoint, None)
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn url(&self) -> String {
        format!("{}://{}", if self.is_tls() { "https" } else { "http" }, self.authority)
    }

    /// One request; `token` goes in `Authorization: Bearer`.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<Reply> {
        let authority = &self.authority;
        let work = async {
            let tcp =
                tokio::net::TcpStream::connect(authority).await.with_context(|| format!("connect to {authority}"))?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                None => send(tcp, authority, method, path, token, body).await,
                Some(config) => {
                    let host = crate::tls::host_of(authority).to_string();
                    let name = rustls::pki_types::ServerName::try_from(host)
                        .with_context(|| format!("{authority}: not a host name for TLS"))?;
                    let stream = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await
                        .with_context(|| format!("TLS handshake with {authority}"))?;
                    send(stream, authority, method, path, token, body).await
                }
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .with_context(|| format!("{authority} did not answer within {timeout:?}"))?
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.request("GET", path, None, None, Duration::from_secs(5)).await
    }
}

async fn send<IO>(
    io: IO,
    authority: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> anyhow::Result<Reply>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default().to_string())))?;
    let resp = sender.send_request(req).await.with_context(|| format!("{method} {path} on {authority}"))?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    Ok(Reply { status, text, json })
}

/// One plain-http request (see [`Api::request`]).
pub async fn request(
    endpoint: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    Api::plain(endpoint)?.request(method, path, token, body, timeout).await
}

pub async fn get(endpoint: &str, path: &str) -> anyhow::Result<Reply> {
    Api::plain(endpoint)?.get(path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let authority = |e: &str| parse_endpoint(e).ok().map(|(_, a)| a.to_string());
        assert_eq!(authority("127.0.0.1:8008").as_deref(), Some("127.0.0.1:8008"));
        assert_eq!(authority("http://db1:8008/").as_deref(), Some("db1:8008"));
        assert_eq!(parse_endpoint("https://db1:8008").ok(), Some((Some("https"), "db1:8008")));
        assert!(parse_endpoint("ftp://db1:8008").is_err());
        assert!(parse_endpoint("db1").is_err());
        assert!(parse_endpoint("http://db1:8008/cluster").is_err());
        assert!(Api::plain("https://db1:8008").is_err(), "https needs a CA");
        assert_eq!(Api::plain("db1:8008").map(|a| a.url()).ok().as_deref(), Some("http://db1:8008"));
    }
}
