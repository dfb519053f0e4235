//! The built-in MCP (Model Context Protocol) server, for agents: tools to
//! create sandboxes, run code and commands, and move files, and the
//! sandboxes' files as resources. Two transports serve the same tools:
//! - `stacyvm mcp` speaks MCP over stdio, to an embedded server (the
//!   settings and data directory of `stacyvm serve`, on a private loopback
//!   port) or to a running one given by `--url`;
//! - `/mcp` on a running server speaks MCP's streamable HTTP, with the REST
//!   API's keys and tenants.
//!
//! Each tool calls the REST API ([`rest`]), so it has exactly the REST
//! API's validation, tenancy, quotas, audit and error messages.

pub mod rest;
mod tools;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::{FromRequestParts as _, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use rmcp::ServiceExt as _;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};

use self::rest::{Backend, Credentials};
use self::tools::{SandboxTools, Session};
use crate::api::AppState;
use crate::api::extract::Caller;
use crate::settings::Settings;

/// `stacyvm mcp`'s options: which server, and who the calls act for.
#[derive(Debug, Clone, clap::Args)]
pub struct StdioOptions {
    /// A running server (http://host:port) to use; without it, an embedded server is started
    /// with the settings and data directory `stacyvm serve` would use, on a private loopback port.
    #[arg(long, env = "STACYVM_URL")]
    pub url: Option<String>,
    /// API key, sent as X-API-Key.
    #[arg(long, env = "STACYVM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// User the calls act for, sent as X-User-ID.
    #[arg(long, env = "STACYVM_USER_ID")]
    pub user_id: Option<String>,
}

/// The address an embedded server binds: loopback, any free port, so it
/// neither clashes with a `stacyvm serve` nor is reachable from elsewhere.
pub const EMBEDDED_BIND: &str = "127.0.0.1:0";

/// Serves MCP on stdin/stdout until the client closes stdin, then destroys
/// the sandboxes the session made without a TTL and stops the embedded
/// server, if any. `settings` are the embedded server's (unused with `--url`).
pub async fn serve_stdio(options: StdioOptions, settings: Settings) -> anyhow::Result<()> {
    let who = Credentials {
        api_key: options.api_key.filter(|k| !k.is_empty()),
        user_id: options.user_id.filter(|u| !u.is_empty()),
    };
    let (backend, embedded) = match &options.url {
        Some(url) => (Backend::http(url, false)?, None),
        None => {
            if settings.auth_enabled() && who.api_key.is_none() {
                anyhow::bail!(
                    "the configuration has API keys, so the embedded server needs one: pass --api-key or set STACYVM_API_KEY"
                );
            }
            let app = crate::App::build(settings).await?;
            let addr: SocketAddr = app.local_addr();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(app.run_until(async {
                stopped.await.ok();
            }));
            (Backend::http(&format!("http://{addr}"), true)?, Some((stop, server)))
        }
    };
    let session = Session::new(backend, Some(who));
    let running = SandboxTools::new(session.clone())
        .serve(rmcp::transport::stdio())
        .await
        .context("the MCP handshake on stdio failed")?;
    let reason = running.waiting().await;
    tracing::info!(?reason, "MCP client on stdio closed");
    session.close().await;
    if let Some((stop, server)) = embedded {
        stop.send(()).ok();
        server.await.context("the embedded server panicked")??;
    }
    Ok(())
}

/// The `/mcp` route: MCP's streamable HTTP, whose tools call `rest` (the
/// server's own router) with each request's `X-API-Key` and `X-User-ID`.
pub fn http_route(rest: axum::Router, state: AppState) -> axum::Router {
    let settings = state.service.settings();
    let mut config = StreamableHttpServerConfig::default().with_max_request_body_bytes(settings.http.body_limit_bytes);
    if settings.auth_enabled() {
        // The API key is the credential, which a DNS-rebinding page cannot
        // send; the Host check is only needed when auth is off, where rmcp's
        // default admits only loopback Host names.
        config = config.disable_allowed_hosts();
    }
    let backend = Backend::Router(rest);
    let service: StreamableHttpService<SandboxTools, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(SandboxTools::new(Session::new(backend.clone(), None))),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    axum::Router::new()
        .route_service("/mcp", service)
        .layer(axum::middleware::from_fn_with_state(state, authenticate))
}

/// `/mcp` takes the REST API's keys: a missing or wrong key is a 401 with
/// the REST API's error body, before any MCP is spoken.
async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    if let Err(e) = Caller::from_request_parts(&mut parts, &state).await {
        return e.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}
