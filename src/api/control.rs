//! Control-plane routes: `POST /sandboxes/admission`, `DELETE /sandboxes`
//! (prune), `GET /quotas/summary`, `GET /quotas/usage` and
//! `GET /pool/status`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Caller};
use crate::sandbox::CreateSandbox;
use crate::sandbox::id::{OwnerId, TenantId};
use crate::settings::Role;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sandboxes/admission", post(admission))
        .route("/quotas/summary", get(quota_summary))
        .route("/quotas/usage", get(quota_usage))
        .route("/pool/status", get(pool_status))
        .route("/providers/test", post(test_providers))
}

/// The fields of a create; `template` is not among them (a template's
/// spawn is checked when it runs).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdmissionBody {
    image: Option<String>,
    provider: Option<String>,
    memory_mb: Option<u64>,
    vcpus: Option<u32>,
    ttl: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    owner_id: Option<String>,
}

/// The owner a request acts for: `X-User-ID`, else the body's `owner_id`.
pub fn owner_of(caller: &Caller, body_owner: Option<&str>) -> Result<Option<OwnerId>, ApiError> {
    match (&caller.owner, body_owner) {
        (Some(o), _) => Ok(Some(o.clone())),
        (None, Some(raw)) => OwnerId::parse(raw).map_err(|m| ApiError::BadRequest(format!("invalid owner_id: {m}"))),
        (None, None) => Ok(None),
    }
}

async fn admission(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<AdmissionBody>,
) -> Result<Response, ApiError> {
    let req = CreateSandbox {
        owner_id: owner_of(&caller, body.owner_id.as_deref())?,
        image: body.image,
        provider: body.provider,
        memory_mb: body.memory_mb,
        vcpus: body.vcpus,
        ttl: body.ttl,
        metadata: body.metadata,
        packages: Vec::new(),
    };
    let decision = state
        .service
        .admission(&caller.tenant, req, caller.role.sees_whole_server())
        .await;
    Ok(Json(decision).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneQuery {
    owner_id: Option<String>,
    tenant: Option<String>,
}

/// The tenant a request names in `?tenant=`, if the caller may act on it:
/// its own always, another only with `role` or above.
fn tenant_for(caller: &Caller, asked: Option<String>, role: Role, what: &str) -> Result<TenantId, ApiError> {
    match asked {
        None => Ok(caller.tenant.clone()),
        Some(t) if t == caller.tenant.as_str() => Ok(caller.tenant.clone()),
        Some(t) if caller.role >= role => Ok(TenantId::new(t)),
        Some(_) => Err(ApiError::Forbidden(format!(
            "only an {} key may {what} another tenant",
            role.as_str()
        ))),
    }
}

/// `DELETE /sandboxes`: destroys the caller's sandboxes (of one owner with
/// `?owner_id=`; an admin may name another tenant with `?tenant=`).
pub async fn prune(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PruneQuery>,
) -> Result<Response, ApiError> {
    let tenant = tenant_for(&caller, q.tenant, Role::Admin, "prune the sandboxes of")?;
    let owner = match q.owner_id.as_deref() {
        Some(raw) => OwnerId::parse(raw).map_err(|m| ApiError::BadRequest(format!("invalid owner_id: {m}")))?,
        None => None,
    };
    let pruned = state
        .service
        .prune(&tenant, owner.as_ref().map(OwnerId::as_str))
        .await?;
    Ok(Json(json!({ "pruned": pruned })).into_response())
}

async fn quota_summary(State(state): State<AppState>, caller: Caller) -> Response {
    let scope = (!caller.role.sees_whole_server()).then_some(&caller.tenant);
    Json(state.service.quota_summary(scope)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    tenant: Option<String>,
}

async fn quota_usage(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> Result<Response, ApiError> {
    let tenant = tenant_for(&caller, q.tenant, Role::Operator, "read the quota usage of")?;
    Ok(Json(state.service.quota_usage(&tenant)).into_response())
}

/// `GET /pool/status`: the docker pool's images, and the StacyVM SDK's
/// fields (`vms`: ready containers, `max_vms`: their target,
/// `total_users`: live sandboxes served by the pool, `max_users_per_vm`: 1).
#[derive(Serialize)]
struct PoolView {
    enabled: bool,
    vms: usize,
    max_vms: usize,
    total_users: usize,
    max_users_per_vm: usize,
    served: u64,
    images: Vec<PoolImageView>,
}

#[derive(Serialize)]
struct PoolImageView {
    provider: String,
    image: String,
    ready: usize,
    creating: usize,
    target: usize,
    memory_mb: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
}

/// A user sees the pool's images and its own tenant's counts; an operator
/// also the whole server's counts and why a refill fails (which can name
/// an image the daemon cannot find, or the daemon itself).
async fn pool_status(State(state): State<AppState>, caller: Caller) -> Response {
    let operator = caller.role.sees_whole_server();
    let scope = (!operator).then_some(&caller.tenant);
    let pools = state.service.pool_statuses(scope);
    let mut view = PoolView {
        enabled: !pools.is_empty(),
        vms: 0,
        max_vms: 0,
        total_users: 0,
        max_users_per_vm: 1,
        served: 0,
        images: vec![],
    };
    for (provider, status) in pools {
        view.total_users += status.serving;
        view.served += status.served;
        for image in status.images {
            view.vms += image.ready;
            view.max_vms += image.target;
            view.images.push(PoolImageView {
                provider: provider.clone(),
                image: image.image,
                ready: image.ready,
                creating: image.creating,
                target: image.target,
                memory_mb: status.memory_mb,
                last_error: status.last_error.clone().filter(|_| operator),
            });
        }
    }
    Json(view).into_response()
}

/// `POST /providers/test`: each provider's health as the StacyVM SDK's
/// `ProviderManager.test()` reads it, `{"wasm": true, "docker": false}`:
/// whether it can create sandboxes now, as its last check found (the
/// docker provider checks its daemon every `docker.recheck_interval`).
async fn test_providers(State(state): State<AppState>, _caller: Caller) -> Response {
    let health: BTreeMap<String, bool> = state
        .service
        .provider_statuses()
        .into_iter()
        .map(|(status, _)| (status.name.to_string(), status.available))
        .collect();
    Json(health).into_response()
}
