//! A small HTTP/1.1 client for the member API (the CLI and the tests use it).

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
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

/// `host:port` of an endpoint given as `host:port` or `http://host:port[/]`.
pub fn authority(endpoint: &str) -> anyhow::Result<String> {
    if endpoint.starts_with("https://") {
        anyhow::bail!("{endpoint}: https is not supported; put a TLS proxy in front or use http://");
    }
    let a = endpoint.strip_prefix("http://").unwrap_or(endpoint).trim_end_matches('/');
    anyhow::ensure!(a.contains(':') && !a.contains('/'), "{endpoint:?} is not host:port or http://host:port");
    Ok(a.to_string())
}

/// One request; `token` goes in `Authorization: Bearer`.
pub async fn request(
    endpoint: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    let authority = authority(endpoint)?;
    let work = async {
        let stream =
            tokio::net::TcpStream::connect(&authority).await.with_context(|| format!("connect to {authority}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &authority)
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
        anyhow::Ok(Reply { status, text, json })
    };
    tokio::time::timeout(timeout, work)
        .await
        .with_context(|| format!("{authority} did not answer within {timeout:?}"))?
}

pub async fn get(endpoint: &str, path: &str) -> anyhow::Result<Reply> {
    request(endpoint, "GET", path, None, None, Duration::from_secs(5)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(authority("127.0.0.1:8008").ok().as_deref(), Some("127.0.0.1:8008"));
        assert_eq!(authority("http://db1:8008/").ok().as_deref(), Some("db1:8008"));
        assert!(authority("https://db1:8008").is_err());
        assert!(authority("db1").is_err());
        assert!(authority("http://db1:8008/cluster").is_err());
    }
}
