//! The link to the Docker daemon and whether it is up.
//!
//! The daemon may be missing at start, may appear later, or may stop
//! answering at any time. [`Connection`] holds the current client or the
//! reason there is none; a background task rechecks it, and any call that
//! fails for want of a daemon marks it down at once.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::ListNetworksOptions;

use crate::provider::ProviderError;

/// Longest wait for the daemon's answer headers. Creating or removing a
/// container on a loaded host takes seconds; thirty bounds a hung daemon
/// without failing a slow one. Exec output streams are not bound by it.
const API_TIMEOUT_SECS: u64 = 30;
/// A ping that takes longer than this counts as a daemon that stopped
/// answering; a healthy daemon answers in milliseconds.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The stacyvm network for `docker.network = "internal"`: no egress, no
/// traffic between containers, but the host reaches every container.
pub const INTERNAL_NETWORK: &str = "stacyvm-internal";

enum State {
    Up(Docker),
    Down(String),
}

pub struct Connection {
    host: Option<String>,
    network: String,
    state: RwLock<State>,
}

impl Connection {
    /// Connects once; whatever the outcome, the returned connection is
    /// usable and a task keeps rechecking it every `recheck`.
    pub async fn open(host: Option<String>, network: String, recheck: Duration) -> Arc<Connection> {
        let conn = Arc::new(Connection {
            host,
            network,
            state: RwLock::new(State::Down("not checked yet".into())),
        });
        conn.recheck().await;
        let weak = Arc::downgrade(&conn);
        tokio::spawn(recheck_loop(weak, recheck));
        conn
    }

    fn address(&self) -> String {
        self.host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
    }

    /// The client, or `Unavailable` with the reason the daemon is down.
    pub fn client(&self) -> Result<Docker, ProviderError> {
        match &*self.state.read().unwrap() {
            State::Up(docker) => Ok(docker.clone()),
            State::Down(reason) => Err(unavailable(reason)),
        }
    }

    /// Why the provider is unavailable, or None when it is up.
    pub fn down_reason(&self) -> Option<String> {
        match &*self.state.read().unwrap() {
            State::Up(_) => None,
            State::Down(reason) => Some(reason.clone()),
        }
    }

    /// Maps a failed API call: a daemon that does not answer marks the
    /// provider down and gives `Unavailable`; anything else is internal.
    pub fn error(&self, what: &str, e: DockerError) -> ProviderError {
        if is_unreachable(&e) {
            let reason = format!("the Docker daemon at {} stopped answering: {e}", self.address());
            tracing::warn!("{reason}");
            *self.state.write().unwrap() = State::Down(reason.clone());
            return unavailable(&reason);
        }
        ProviderError::Internal(anyhow::anyhow!("docker {what} failed: {e}"))
    }

    async fn recheck(&self) {
        let current = match &*self.state.read().unwrap() {
            State::Up(docker) => Some(docker.clone()),
            State::Down(_) => None,
        };
        let next = match current {
            Some(docker) => match tokio::time::timeout(PROBE_TIMEOUT, docker.ping()).await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => State::Down(format!(
                    "the Docker daemon at {} stopped answering: {e}",
                    self.address()
                )),
                Err(_) => State::Down(format!(
                    "the Docker daemon at {} stopped answering within {}",
                    self.address(),
                    crate::duration::format(PROBE_TIMEOUT)
                )),
            },
            None => match self.connect().await {
                Ok(docker) => State::Up(docker),
                Err(reason) => State::Down(reason),
            },
        };
        let mut state = self.state.write().unwrap();
        match (&*state, &next) {
            (State::Down(_), State::Up(_)) => tracing::info!(host = %self.address(), "docker provider is available"),
            (State::Up(_), State::Down(reason)) => tracing::warn!("docker provider is unavailable: {reason}"),
            _ => {}
        }
        *state = next;
    }

    async fn connect(&self) -> Result<Docker, String> {
        let address = self.address();
        let cannot = |e: &dyn std::fmt::Display| format!("cannot reach the Docker daemon at {address}: {e}");
        let docker = match &self.host {
            Some(host) => Docker::connect_with_host(host),
            None => Docker::connect_with_defaults(),
        }
        .map_err(|e| cannot(&e))?
        .with_timeout(Duration::from_secs(API_TIMEOUT_SECS));
        // The daemon may speak an older API than bollard's default (Debian's
        // docker.io speaks 1.41); without this every call would be refused.
        let docker = tokio::time::timeout(PROBE_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| cannot(&"no answer"))?
            .map_err(|e| cannot(&e))?;
        if self.network == "internal" {
            ensure_internal_network(&docker)
                .await
                .map_err(|e| format!("cannot create the docker network {INTERNAL_NETWORK}: {e}"))?;
        }
        Ok(docker)
    }
}

async fn recheck_loop(conn: Weak<Connection>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(conn) = conn.upgrade() else { return };
        conn.recheck().await;
    }
}

/// Serialises network creation within the process: daemons before Engine
/// 25 accept two networks of one name, and bollard cannot send the old
/// `CheckDuplicate` flag.
static NETWORK_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Creates the internal network unless it exists. Should another server
/// create one at the same moment, every server keeps the one with the
/// smallest id and removes the others.
pub async fn ensure_internal_network(docker: &Docker) -> Result<(), DockerError> {
    let _one_at_a_time = NETWORK_LOCK.lock().await;
    let existing = internal_networks(docker).await?;
    if !existing.is_empty() {
        return Ok(());
    }
    let request = NetworkCreateRequest {
        name: INTERNAL_NETWORK.into(),
        driver: Some("bridge".into()),
        internal: Some(true),
        // Sandboxes of different tenants share the network: they must not
        // reach one another.
        options: Some([("com.docker.network.bridge.enable_icc".to_string(), "false".to_string())].into()),
        labels: Some([("stacyvm.network".to_string(), "internal".to_string())].into()),
        ..Default::default()
    };
    match docker.create_network(request).await {
        Ok(_) => {}
        Err(DockerError::DockerResponseServerError { status_code: 409, .. }) => return Ok(()),
        Err(e) => return Err(e),
    }
    let mut all = internal_networks(docker).await?;
    all.sort();
    for extra in all.iter().skip(1) {
        docker.remove_network(extra).await.ok();
    }
    Ok(())
}

/// Ids of the networks named exactly [`INTERNAL_NETWORK`] (the daemon's name
/// filter matches substrings).
async fn internal_networks(docker: &Docker) -> Result<Vec<String>, DockerError> {
    let options = ListNetworksOptions {
        filters: Some([("name".to_string(), vec![INTERNAL_NETWORK.to_string()])].into()),
    };
    Ok(docker
        .list_networks(Some(options))
        .await?
        .into_iter()
        .filter(|n| n.name.as_deref() == Some(INTERNAL_NETWORK))
        .filter_map(|n| n.id)
        .collect())
}

fn unavailable(reason: &str) -> ProviderError {
    ProviderError::Unavailable(format!("the docker provider is unavailable: {reason}"))
}

/// Whether the error means the daemon did not answer at all (as opposed to
/// answering with an error status).
fn is_unreachable(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::RequestTimeoutError
            | DockerError::IOError { .. }
            | DockerError::HyperResponseError { .. }
            | DockerError::HyperLegacyError { .. }
            | DockerError::HttpClientError { .. }
            | DockerError::SocketNotFoundError(_)
    )
}

/// The HTTP status the daemon answered with, if it answered.
pub fn status_code(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The daemon's own message for an error status.
pub fn message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
