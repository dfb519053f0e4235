//! `GET /events`: server-sent events of the caller's tenant.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use super::extract::Caller;

pub fn router() -> Router<AppState> {
    Router::new().route("/events", get(events))
}

async fn events(
    State(state): State<AppState>,
    caller: Caller,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = state.service.subscribe(&caller.tenant);
    let tenant = caller.tenant;
    let stream = futures_util::stream::unfold((rx, tenant), |(mut rx, tenant)| async move {
        loop {
            match rx.recv().await {
                Ok(event) if event.tenant == tenant => {
                    let sse = SseEvent::default()
                        .id(event.id.to_string())
                        .event(event.kind)
                        .json_data(&*event)
                        .unwrap_or_default();
                    return Some((Ok(sse), (rx, tenant)));
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => {
                    let sse =
                        SseEvent::default().comment(format!("missed {missed} events: this client reads too slowly"));
                    return Some((Ok(sse), (rx, tenant)));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    // Proxies close idle connections; a comment every 15 s keeps it open.
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
