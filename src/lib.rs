//! stacyvm: a sandbox server. Untrusted code arrives over a REST API and runs
//! in WebAssembly (wasmtime + WASI) or in a Docker container.
//!
//! A tour of the modules:
//! - [`settings`]: layered configuration, validated before binding.
//! - [`api`]: the axum routers, `ApiError` and the extractors.
//! - [`sandbox`]: the `SandboxService` the API calls, the registry, TTL
//!   reaping, ids, paths and tenancy.
//! - [`provider`]: the `Provider` trait; `provider::wasm` runs interpreters
//!   under wasmtime.
//! - [`runtime`]: the interpreter catalogue from `runtimes/` and
//!   `wasm-images/`, and fetching images.
//! - [`duration`]: Go duration syntax for `ttl` and `timeout`.
//! - [`bench`]: `stacyvm bench`, latency, throughput and density over HTTP.
//! - [`cli`]: `stacyvm sandbox|template`, a client of the REST API, and
//!   `stacyvm doctor`, which checks the host.
//! - [`mcp`]: the MCP server for agents, `stacyvm mcp` (stdio) and `/mcp`.

pub mod api;
pub mod bench;
pub mod cli;
pub mod duration;
pub mod mcp;
pub mod provider;
pub mod runtime;
pub mod sandbox;
pub mod settings;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::AppState;
use crate::api::extract::KeyEntry;
use crate::provider::Provider;
use crate::provider::wasm::WasmProvider;
use crate::runtime::Catalog;
use crate::sandbox::SandboxService;
use crate::sandbox::id::TenantId;
use crate::settings::Settings;

/// A built server: listening, with its providers loaded, not yet serving.
pub struct App {
    listener: TcpListener,
    state: AppState,
}

impl App {
    /// Loads images and providers, recovers the registry, and binds.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        settings.validate()?;
        let settings = Arc::new(settings);
        create_private_dir(&settings.data_dir)?;
        create_private_dir(&settings.data_dir.join("sandboxes"))?;
        let catalog = match &settings.wasm.catalog_dir {
            Some(dir) => Catalog::from_dir(dir)?,
            None => Catalog::built_in()?,
        };
        let started = Instant::now();
        let wasm = WasmProvider::new(&settings, catalog).await?;
        tracing::info!(elapsed = ?started.elapsed(), "wasm provider ready");
        let providers: Vec<Arc<dyn Provider>> = vec![Arc::new(wasm), provider::docker::start(&settings).await];
        let service = Arc::new(SandboxService::start(settings.clone(), providers).await?);
        let listener = TcpListener::bind(settings.bind)
            .await
            .with_context(|| format!("cannot bind {}", settings.bind))?;
        if !settings.auth_enabled() && !settings.bind.ip().is_loopback() {
            tracing::warn!(bind = %settings.bind, "no API key is configured and the server listens beyond loopback: anyone who can reach it can run code");
        }
        let keys = settings
            .auth
            .keys
            .iter()
            .map(|k| KeyEntry {
                key: k.key.expose().to_string(),
                tenant: TenantId::new(k.tenant.clone()),
                role: k.role,
            })
            .collect();
        Ok(App {
            listener,
            state: AppState {
                service,
                keys: Arc::new(keys),
                started,
                // Preview traffic goes straight to the sandbox: never
                // through a proxy named by HTTP_PROXY, HTTPS_PROXY or ALL_PROXY.
                proxy: reqwest::Client::builder()
                    .no_proxy()
                    .redirect(reqwest::redirect::Policy::none())
                    .connect_timeout(std::time::Duration::from_secs(5))
                    .build()?,
            },
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let service = self.state.service.clone();
        let reaper_service = service.clone();
        let reap_interval = service.settings().sandbox.reap_interval;
        let reaper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(reap_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                reaper_service.reap_expired().await;
                reaper_service.pause_idle_contexts().await;
            }
        });
        tracing::info!(addr = %self.local_addr(), "stacyvm listening");
        let result = axum::serve(self.listener, api::router(self.state))
            .with_graceful_shutdown(shutdown)
            .await;
        reaper.abort();
        service.shutdown().await;
        tracing::info!("stacyvm stopped");
        Ok(result?)
    }

    /// Serves until SIGINT or SIGTERM.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }
}

/// Creates `dir` (and its parents) if missing, and makes it `0700`: the
/// data directory holds every tenant's files, the registry and the images,
/// which no other local user should read or enter.
fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private (mode 0700)", dir.display()))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.ok();
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
