//! The REST client the MCP tools share. Every tool is a call to a stacyvm
//! server's REST API, so it gets that API's validation, tenancy, quotas,
//! audit and error messages unchanged. The server is either reached over
//! HTTP (`stacyvm mcp`) or, for `/mcp` on a running server, called
//! in-process through its own router, with the caller's headers.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request};
use bytes::Bytes;
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// The largest answer the MCP tools read from the REST API: files are
/// handed to a model whole, and anything bigger would not fit its context.
const MAX_ANSWER_BYTES: usize = 32 << 20;

/// Where the REST API is.
#[derive(Clone)]
pub enum Backend {
    /// A server at this base URL (`http://host:port`), over HTTP.
    Http { client: reqwest::Client, base: String },
    /// This process's own router (the `/mcp` route of a running server).
    Router(axum::Router),
}

/// Who a call acts for: the API key (`X-API-Key`) and the user (`X-User-ID`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Credentials {
    pub api_key: Option<String>,
    pub user_id: Option<String>,
}

/// An answer of the REST API with a success status.
pub struct Answer {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A failed call: the REST API's error body (`{"code","message",...}`), or
/// a server that could not be reached, in the same shape.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: u16,
    pub body: Value,
}

impl Failure {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("error")
    }

    pub fn message(&self) -> String {
        self.body["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("the server answered {} with no message", self.status))
    }

    fn unreachable(what: String) -> Failure {
        Failure {
            status: 503,
            body: json!({"code": "unavailable", "message": what}),
        }
    }
}

/// A REST request: method, path below `/api/v1` (with its query), and body.
pub struct Call {
    pub method: Method,
    pub path: String,
    pub body: Option<Value>,
}

impl Call {
    pub fn get(path: impl Into<String>) -> Call {
        Call {
            method: Method::GET,
            path: path.into(),
            body: None,
        }
    }

    pub fn post(path: impl Into<String>, body: Value) -> Call {
        Call {
            method: Method::POST,
            path: path.into(),
            body: Some(body),
        }
    }

    pub fn delete(path: impl Into<String>) -> Call {
        Call {
            method: Method::DELETE,
            path: path.into(),
            body: None,
        }
    }
}

impl Backend {
    /// A client of the server at `url` (`http://host:port`); `direct`
    /// ignores proxy settings (an embedded server on loopback).
    pub fn http(url: &str, direct: bool) -> anyhow::Result<Backend> {
        let base = url.trim_end_matches('/');
        if !base.starts_with("http://") && !base.starts_with("https://") {
            anyhow::bail!("--url must start with http:// or https://, not {base:?}");
        }
        let mut client = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(10));
        if direct {
            client = client.no_proxy();
        }
        Ok(Backend::Http {
            client: client.build()?,
            base: base.to_string(),
        })
    }

    /// Sends `call` for `who`; a non-2xx answer is a [`Failure`] carrying
    /// the REST API's error body.
    pub async fn send(&self, who: &Credentials, call: Call) -> Result<Answer, Failure> {
        let body = call.body.map(|v| v.to_string());
        let (status, headers, bytes) = match self {
            Backend::Http { client, base } => {
                let mut rb = client.request(call.method, format!("{base}/api/v1{}", call.path));
                if let Some(k) = &who.api_key {
                    rb = rb.header("X-API-Key", k);
                }
                if let Some(u) = &who.user_id {
                    rb = rb.header("X-User-ID", u);
                }
                if let Some(b) = body {
                    rb = rb.header("Content-Type", "application/json").body(b);
                }
                let mut resp = rb
                    .send()
                    .await
                    .map_err(|e| Failure::unreachable(format!("cannot reach the stacyvm server at {base}: {e}")))?;
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                // Bounded as the in-process answer is: the server at --url
                // is not necessarily this version, or ours.
                let mut bytes = Vec::new();
                while let Some(chunk) = resp
                    .chunk()
                    .await
                    .map_err(|e| Failure::unreachable(format!("the stacyvm server's answer broke off: {e}")))?
                {
                    if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                        return Err(Failure::unreachable(format!(
                            "the stacyvm server's answer is over {MAX_ANSWER_BYTES} bytes"
                        )));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                (status, headers, Bytes::from(bytes))
            }
            Backend::Router(router) => {
                let mut req = Request::builder()
                    .method(call.method)
                    .uri(format!("/api/v1{}", call.path));
                for (name, value) in [("x-api-key", &who.api_key), ("x-user-id", &who.user_id)] {
                    if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                        req = req.header(name, v);
                    }
                }
                let req = match body {
                    Some(b) => req.header("content-type", "application/json").body(Body::from(b)),
                    None => req.body(Body::empty()),
                }
                .map_err(|e| Failure::unreachable(format!("cannot build the request: {e}")))?;
                let resp = router.clone().oneshot(req).await.unwrap_or_else(|e| match e {});
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let bytes = axum::body::to_bytes(resp.into_body(), MAX_ANSWER_BYTES)
                    .await
                    .map_err(|e| Failure::unreachable(format!("cannot read the answer: {e}")))?;
                (status, headers, bytes)
            }
        };
        if (200..300).contains(&status) {
            return Ok(Answer { headers, body: bytes });
        }
        let body = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .filter(|v| v["message"].is_string())
            .unwrap_or_else(|| {
                json!({"code": "error", "message": format!("the server answered {status}: {}", String::from_utf8_lossy(&bytes))})
            });
        Err(Failure { status, body })
    }
}

/// Percent-encodes a sandbox path for a resource URI: everything but
/// unreserved characters and `/`.
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Undoes [`encode_path`]; None for a broken escape or invalid UTF-8.
pub fn decode_path(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A query-string value, percent-encoded.
pub fn query_value(s: &str) -> String {
    encode_path(s).replace('/', "%2F")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_survive_a_round_trip_through_a_resource_uri() {
        for (path, encoded) in [
            ("/workspace/a.txt", "/workspace/a.txt"),
            ("/workspace/my notes.md", "/workspace/my%20notes.md"),
            ("/workspace/ü?#%", "/workspace/%C3%BC%3F%23%25"),
        ] {
            assert_eq!(encode_path(path), encoded);
            assert_eq!(decode_path(encoded).as_deref(), Some(path));
        }
    }

    #[test]
    fn a_broken_escape_decodes_to_nothing() {
        for bad in ["%", "%4", "%zz", "%FF"] {
            assert_eq!(decode_path(bad), None, "{bad}");
        }
    }
}
