//! Preview: HTTP into a port of a sandbox, by path
//! (`/sandboxes/{id}/preview/{port}/{rest}`) or by host
//! (`{port}-{id}.{preview_domain}`).

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use super::extract::Caller;

/// Headers that belong to one hop and must not be forwarded (RFC 9110 7.6.1),
/// plus our own credentials, which the sandbox must never see.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "x-api-key",
];

pub async fn by_path(
    State(state): State<AppState>,
    caller: Caller,
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
) -> Result<Response, ApiError> {
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let id = get("id").unwrap_or_default();
    let port = parse_port(&get("port").unwrap_or_default())?;
    let rest = get("rest").unwrap_or_default();
    let target = state.service.preview_target(&caller.tenant, &id, port).await?;
    forward(&state, target, &id, port, &rest, req).await
}

/// Middleware: requests whose Host is `{port}-{id}.{preview_domain}` go to
/// the sandbox; everything else goes on to the API.
pub async fn by_host(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(domain) = state.service.settings().preview_domain.clone() else {
        return next.run(req).await;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.split(':').next().unwrap_or(h).to_ascii_lowercase());
    let Some((port, id)) = host.as_deref().and_then(|h| parse_preview_host(h, &domain)) else {
        return next.run(req).await;
    };
    let result = async {
        let target = state.service.preview_target_by_id(&id, port).await?;
        let rest = req.uri().path().trim_start_matches('/').to_string();
        forward(&state, target, &id, port, &rest, req).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `8080-sb_abc.preview.example.com` → (8080, `sb_abc`).
pub fn parse_preview_host(host: &str, domain: &str) -> Option<(u16, String)> {
    let label = host.strip_suffix(domain)?.strip_suffix('.')?;
    let (port, id) = label.split_once('-')?;
    Some((port.parse().ok().filter(|p| *p > 0)?, id.to_string()))
}

fn parse_port(s: &str) -> Result<u16, ApiError> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("port {s:?} is not a TCP port number")))
}

async fn forward(
    state: &AppState,
    target: SocketAddr,
    id: &str,
    port: u16,
    rest: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let url = format!("http://{target}/{rest}{query}");
    let limit = state.service.settings().http.body_limit_bytes;
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge("the request body is over the configured limit".into()))?;
    let mut headers = strip(&parts.headers);
    if let Some(host) = parts.headers.get(header::HOST) {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
    let response = state
        .proxy
        .request(parts.method, &url)
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(|e| {
            let why = if e.is_connect() {
                "nothing accepted the connection"
            } else if e.is_timeout() {
                "the connection timed out"
            } else {
                "the connection failed"
            };
            ApiError::BadGateway(format!("cannot reach port {port} in sandbox {id}: {why}"))
        })?;
    let mut out = Response::builder().status(response.status());
    for (name, value) in strip(response.headers()).iter() {
        out = out.header(name, value);
    }
    out.body(Body::from_stream(response.bytes_stream()))
        .map_err(|e| ApiError::Internal(e.into()))
}

fn strip(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    for name in HOP_BY_HOP {
        out.remove(*name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_hosts_name_a_port_and_a_sandbox() {
        let d = "preview.example.com";
        assert_eq!(
            parse_preview_host("8080-sb_0123456789abcdef0123.preview.example.com", d),
            Some((8080, "sb_0123456789abcdef0123".into()))
        );
        assert_eq!(parse_preview_host("preview.example.com", d), None);
        assert_eq!(parse_preview_host("x-sb_1.preview.example.com", d), None);
        assert_eq!(parse_preview_host("0-sb_1.preview.example.com", d), None);
        assert_eq!(parse_preview_host("8080-sb_1.evil.com", d), None);
        assert_eq!(parse_preview_host("8080-sb_1xpreview.example.com", d), None);
    }
}
