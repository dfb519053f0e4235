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

/// Who is calling: the tenant of their API key, and the user they act for.
pub struct Caller {
    pub tenant: TenantId,
    pub owner: Option<OwnerId>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let tenant = if state.keys.is_empty() {
            TenantId::default_tenant()
        } else {
            let given = parts
                .headers
                .get("x-api-key")
                .map(|v| v.as_bytes())
                .ok_or(ApiError::Unauthorized)?;
            // Compare against every key, in constant time, so that timing
            // reveals neither which key nor how much of it matched.
            let mut found = None;
            for (key, tenant) in state.keys.iter() {
                if bool::from(key.as_bytes().ct_eq(given)) {
                    found = Some(tenant.clone());
                }
            }
            found.ok_or(ApiError::Unauthorized)?
        };
        let owner = match parts.headers.get("x-user-id") {
            None => None,
            Some(v) => {
                let s = v
                    .to_str()
                    .map_err(|_| ApiError::BadRequest("X-User-ID must be printable ASCII or UTF-8".into()))?;
                OwnerId::parse(s).map_err(|m| ApiError::BadRequest(format!("invalid X-User-ID: {m}")))?
            }
        };
        Ok(Caller { tenant, owner })
    }
}
