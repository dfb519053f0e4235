//! `ApiError`: every failure the API answers, always as `{code, message}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::provider::{ExecOutput, ProviderError};
use crate::sandbox::ServiceError;

#[derive(Debug)]
pub enum ApiError {
    /// 400 `bad_request`: invalid input.
    BadRequest(String),
    /// 401 `unauthorized`: missing or wrong API key.
    Unauthorized,
    /// 403 `forbidden`: the key's role does not allow this.
    Forbidden(String),
    /// 404 `not_found`: unknown sandbox, file or route.
    NotFound(String),
    /// 405 `method_not_allowed`: the route exists, the method does not.
    MethodNotAllowed(String),
    /// 408 `timeout`: an exec ran past its timeout; carries partial output.
    Timeout(String, Box<ExecOutput>),
    /// 409 `conflict`: already exists, or not running.
    Conflict(String),
    /// 413 `payload_too_large`: a body or file over the configured limit.
    PayloadTooLarge(String),
    /// 422 `unsupported`: the provider cannot do this.
    Unsupported(String),
    /// 429 `resource_limit`: over a quota; an exec stopped by a limit
    /// carries its partial output.
    ResourceLimit(String, Option<Box<ExecOutput>>),
    /// 429 `resource_limit` with `Retry-After`: over the tenant's exec rate.
    RateLimited(String, std::time::Duration),
    /// 422 `setup_failed`: a template's setup command failed; carries its
    /// output. The sandbox was destroyed.
    SetupFailed(Box<crate::sandbox::templates::SetupFailure>),
    /// 502 `bad_gateway`: preview could not reach the port in the sandbox.
    BadGateway(String),
    /// 503 `unavailable`: the provider is not available.
    Unavailable(String),
    /// 500 `internal`: logged in full, answered with a generic message.
    Internal(anyhow::Error),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stderr: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<f64>,
    /// A failed setup command: which one (1-based), what, and its status.
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
}

impl ApiError {
    /// The `code` and `message` this error answers with, for framings other
    /// than a plain response (NDJSON, WebSocket).
    pub fn code_and_message(self) -> (&'static str, String) {
        let response = self.into_response();
        let code = response
            .extensions()
            .get::<ErrorCode>()
            .map(|c| c.0)
            .unwrap_or("internal");
        // A stream goes to whoever asked: it carries the redacted form.
        let message = response
            .extensions()
            .get::<Redacted>()
            .map(|m| m.0.clone())
            .or_else(|| response.extensions().get::<ErrorMessage>().map(|m| m.0.clone()))
            .unwrap_or_default();
        (code, message)
    }
}

#[derive(Clone)]
struct ErrorCode(&'static str);
#[derive(Clone)]
struct ErrorMessage(String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut retry_after = None;
        let mut setup = None;
        let (status, code, message, partial) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m, None),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid X-API-Key header is required".to_string(),
                None,
            ),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m, None),
            ApiError::RateLimited(m, wait) => {
                retry_after = Some(crate::sandbox::quotas::retry_after_secs(wait));
                (StatusCode::TOO_MANY_REQUESTS, "resource_limit", m, None)
            }
            ApiError::SetupFailed(failure) => {
                let failure = *failure;
                let partial = ExecOutput {
                    exit_code: failure.exit_code.unwrap_or(-1),
                    stdout: failure.stdout,
                    stderr: failure.stderr,
                    truncated: failure.truncated,
                    ..ExecOutput::default()
                };
                setup = Some((failure.step, failure.command, failure.exit_code));
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "setup_failed",
                    failure.message,
                    Some(Box::new(partial)),
                )
            }
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m, None),
            ApiError::MethodNotAllowed(m) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", m, None),
            ApiError::Timeout(m, out) => (StatusCode::REQUEST_TIMEOUT, "timeout", m, Some(out)),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m, None),
            ApiError::PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", m, None),
            ApiError::Unsupported(m) => (StatusCode::UNPROCESSABLE_ENTITY, "unsupported", m, None),
            ApiError::ResourceLimit(m, out) => (StatusCode::TOO_MANY_REQUESTS, "resource_limit", m, out),
            ApiError::BadGateway(m) => (StatusCode::BAD_GATEWAY, "bad_gateway", m, None),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m, None),
            ApiError::Internal(e) => {
                tracing::error!("internal error: {e:#}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "an internal error occurred; the details are in the server log".to_string(),
                    None,
                )
            }
        };
        let redacted = match code {
            "unavailable" => without_reason(&message).inspect(|_| tracing::warn!("{message}")),
            _ => None,
        };
        let extensions = (ErrorCode(code), ErrorMessage(message.clone()));
        let body = ErrorBody {
            code,
            message,
            stdout: partial
                .as_ref()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned()),
            stderr: partial
                .as_ref()
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned()),
            truncated: partial.as_ref().is_some_and(|o| o.truncated),
            duration_ms: partial
                .as_ref()
                .filter(|_| setup.is_none())
                .map(|o| o.duration.as_secs_f64() * 1000.0),
            step: setup.as_ref().map(|s| s.0),
            command: setup.as_ref().map(|s| s.1.clone()),
            exit_code: setup.as_ref().and_then(|s| s.2),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
        }
        response.extensions_mut().insert(extensions.0);
        response.extensions_mut().insert(extensions.1);
        if let Some(redacted) = redacted {
            response.extensions_mut().insert(Redacted(redacted));
        }
        response
    }
}

/// "the docker provider is unavailable: cannot connect to unix:///..." →
/// "the docker provider is unavailable; an operator can see why...": the
/// reason can name the daemon's address, which only operators may read.
fn without_reason(message: &str) -> Option<String> {
    let (head, _) = message.split_once(": ")?;
    Some(format!("{head}; an operator can see why in GET /providers"))
}

/// The form of an error answer for callers who may not read its details;
/// `api::redact_details` answers it to them.
#[derive(Clone)]
pub struct Redacted(pub String);

/// The one place where domain errors become HTTP answers.
impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::SandboxNotFound(id) => ApiError::NotFound(format!("sandbox {id} not found")),
            ServiceError::BadRequest(m) => ApiError::BadRequest(m),
            ServiceError::ResourceLimit(m) => ApiError::ResourceLimit(m, None),
            ServiceError::Conflict(m) => ApiError::Conflict(m),
            ServiceError::RateLimited { message, retry_after } => ApiError::RateLimited(message, retry_after),
            ServiceError::Forbidden(m) => ApiError::Forbidden(m),
            ServiceError::TemplateNotFound(name) => ApiError::NotFound(format!("template {name} not found")),
            ServiceError::SetupFailed(failure) => ApiError::SetupFailed(failure),
            ServiceError::Provider(p) => {
                let message = p.to_string();
                match p {
                    ProviderError::NotFound(m) => ApiError::NotFound(m),
                    ProviderError::Unavailable(m) => ApiError::Unavailable(m),
                    ProviderError::Unsupported(m) => ApiError::Unsupported(m),
                    ProviderError::InvalidInput(m) => ApiError::BadRequest(m),
                    ProviderError::Conflict(m) => ApiError::Conflict(m),
                    ProviderError::QuotaExceeded(m) => ApiError::ResourceLimit(m, None),
                    ProviderError::Timeout { partial, .. } => ApiError::Timeout(message, partial),
                    ProviderError::FuelExhausted { partial, .. } | ProviderError::MemoryLimit { partial, .. } => {
                        ApiError::ResourceLimit(message, Some(partial))
                    }
                    // Nobody is left to read this answer; it only reaches the log.
                    ProviderError::Cancelled => {
                        ApiError::Conflict("the client disconnected and the command was stopped".into())
                    }
                    ProviderError::Internal(e) => ApiError::Internal(e),
                }
            }
        }
    }
}
