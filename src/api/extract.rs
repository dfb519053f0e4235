//! Extractors that reject with our error body: JSON, query strings, and the
//! caller's identity (API key → tenant, `X-User-ID` → owner).

use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use crate::sandbox::id::{OwnerId, TenantId};
use crate::settings::Role;

/// A JSON body. Any content type is accepted, so `curl -d` works; malformed
/// JSON, wrong types and unknown enum values answer 400, an oversized body 413.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::BadRequest(
                "the request body is empty; a JSON object is required".into(),
            ));
        }
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

/// Maps a failure to read the body to 413 or 400.
pub fn body_error(e: axum::extract::rejection::BytesRejection) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge("the request body is over the configured limit".into())
    } else {
        ApiError::BadRequest(format!("cannot read the request body: {e}"))
    }
}

/// A query string, rejected with our error body.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::BadRequest(format!("invalid query string: {}", e.body_text())))
    }
}

/// A configured API key, as the extractors compare it.
pub struct KeyEntry {
    pub key: String,
    pub tenant: TenantId,
    pub role: Role,
}

/// Who is calling: the tenant and role of their API key, and the user they
/// act for. With auth off the single caller is the `default` tenant with
/// the operator role.
pub struct Caller {
    pub tenant: TenantId,
    pub owner: Option<OwnerId>,
    pub role: Role,
}

/// The tenant and role of the request's key: `Ok(None)` when auth is on and
/// no key was sent, 401 for a wrong key.
fn identify(parts: &Parts, state: &AppState) -> Result<Option<(TenantId, Role)>, ApiError> {
    if state.keys.is_empty() {
        return Ok(Some((TenantId::default_tenant(), Role::Operator)));
    }
    let Some(given) = parts.headers.get("x-api-key").map(|v| v.as_bytes()) else {
        return Ok(None);
    };
    // Compare against every key, in constant time, so that timing
    // reveals neither which key nor how much of it matched.
    let mut found = None;
    for entry in state.keys.iter() {
        if bool::from(entry.key.as_bytes().ct_eq(given)) {
            found = Some((entry.tenant.clone(), entry.role));
        }
    }
    found.map(Some).ok_or(ApiError::Unauthorized)
}

/// Whether the request's key (or auth being off) lets it read the whole
/// server's details; a missing or wrong key does not.
pub fn sees_whole_server(parts: &Parts, state: &AppState) -> bool {
    matches!(identify(parts, state), Ok(Some((_, role))) if role.sees_whole_server())
}

/// The role of a caller on a route that also answers without a key: None
/// for an anonymous caller; a key that is sent must be valid.
pub struct Viewer(pub Option<Role>);

impl FromRequestParts<AppState> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(Viewer(identify(parts, state)?.map(|(_, role)| role)))
    }
}

impl Viewer {
    pub fn sees_whole_server(&self) -> bool {
        self.0.is_some_and(Role::sees_whole_server)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (tenant, role) = identify(parts, state)?.ok_or(ApiError::Unauthorized)?;
        let owner = match parts.headers.get("x-user-id") {
            None => None,
            Some(v) => {
                let s = v
                    .to_str()
                    .map_err(|_| ApiError::BadRequest("X-User-ID must be printable ASCII or UTF-8".into()))?;
                OwnerId::parse(s).map_err(|m| ApiError::BadRequest(format!("invalid X-User-ID: {m}")))?
            }
        };
        Ok(Caller { tenant, owner, role })
    }
}
