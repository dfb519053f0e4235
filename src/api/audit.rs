//! `GET /audit`, and the middleware that names each request's actor for the
//! audit log and records failed authentications.

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiQuery, Caller};
use crate::sandbox::audit::{self, Actor, Entry, MAX_LIMIT, Query};

pub fn router() -> Router<AppState> {
    Router::new().route("/audit", get(read))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    /// RFC 3339 time: only entries at or after it.
    since: Option<String>,
    sandbox_id: Option<String>,
    limit: Option<usize>,
    /// Operators: one tenant's entries (default: every tenant's).
    tenant: Option<String>,
}

/// Entries default to the latest hundred.
const DEFAULT_LIMIT: usize = 100;

/// The caller's tenant's entries, newest first; an operator's key reads
/// every tenant's (and the entries that belong to none, such as failed
/// logins), or one tenant's with `?tenant=`.
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    let operator = caller.role.sees_whole_server();
    let tenant = match q.tenant {
        Some(t) if operator || t == caller.tenant.as_str() => Some(t),
        Some(_) => {
            return Err(ApiError::Forbidden(
                "only an operator key may read another tenant's audit log".into(),
            ));
        }
        None if operator => None,
        None => Some(caller.tenant.as_str().to_string()),
    };
    let since = q
        .since
        .as_deref()
        .map(|s| {
            humantime::parse_rfc3339_weak(s).map_err(|e| {
                ApiError::BadRequest(format!(
                    "since {s:?} is not an RFC 3339 time such as 2026-01-31T12:00:00Z: {e}"
                ))
            })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    let query = Query {
        tenant,
        since,
        sandbox_id: q.sandbox_id,
        limit,
    };
    let service = state.service.clone();
    let entries = tokio::task::spawn_blocking(move || service.audit_log().query(&query))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(ApiError::Internal)?;
    Ok(Json(entries).into_response())
}

/// Names the request's actor (the id of its key) for everything the
/// request does, and records a refused authentication with its route.
pub async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req.headers().get("x-api-key").map(|v| audit::key_id(v.as_bytes()));
    let actor = Actor {
        key_id: presented.clone(),
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().chars().take(200).collect());
    let method = req.method().clone();
    let response = audit::scope(actor, next.run(req)).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        let why = if presented.is_some() {
            "unauthorized: the API key is not valid"
        } else {
            "unauthorized: no API key was sent"
        };
        state.service.audit(Entry {
            key_id: presented,
            ..Entry::new("auth.failure", why).subject(format!("{method} {route}"))
        });
    }
    response.into_response()
}
