//! The HTTP server beside the poll loop: `/metrics` (Prometheus text format), `/healthz`,
//! `/readyz` and the read-only state queries `/state/sku/{sku}` and `/state/order/{order_id}`.
//! It only reads what the runtime publishes in its `Status`, on its own threads, so a slow
//! client never slows processing and a stalled loop is still reported.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use crate::config::HttpConfig;
use crate::query::Answer;
use crate::runtime::Status;

/// The header that names the partition of a queried key, so a proxy can route on it.
pub const PARTITION_HEADER: &str = "x-orderfold-partition";

#[derive(Clone)]
struct Served {
    status: Arc<Status>,
    state_queries: bool,
    stall_after: Duration,
}

/// Binds the configured address now, so a taken port fails the start instead of the first
/// scrape. None when `http.bind` is empty.
pub fn bind(config: &HttpConfig) -> std::io::Result<Option<std::net::TcpListener>> {
    if config.bind.is_empty() {
        return Ok(None);
    }
    let listener = std::net::TcpListener::bind(&config.bind)?;
    listener.set_nonblocking(true)?;
    Ok(Some(listener))
}

/// Serves until the process ends. Must run inside a tokio runtime.
pub async fn serve(
    listener: std::net::TcpListener,
    config: &HttpConfig,
    status: Arc<Status>,
) -> std::io::Result<()> {
    let served = Served {
        status,
        state_queries: config.state_queries,
        stall_after: Duration::from_millis(config.stall_after_ms),
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/state/sku/{sku}", get(sku))
        .route("/state/order/{order_id}", get(order))
        .with_state(served);
    let listener = tokio::net::TcpListener::from_std(listener)?;
    axum::serve(listener, app).await
}

async fn metrics(State(s): State<Served>) -> Response {
    match s.status.metrics.encode() {
        Ok(body) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Alive: the loop has gone round (or a restore has moved) within `stall_after_ms`.
async fn healthz(State(s): State<Served>) -> Response {
    let since = s.status.since_heartbeat_ms();
    if since > s.stall_after.as_millis() as u64 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stalled: the poll loop has not gone round for {since} ms\n"),
        )
            .into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

/// Ready: assigned, and every assigned task restored and running.
async fn readyz(State(s): State<Served>) -> Response {
    match s.status.not_ready_because() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

#[derive(Serialize)]
struct NotHere<'a> {
    error: &'static str,
    key: &'a str,
    partition: u32,
}

fn answer<T: Serialize>(
    s: &Served,
    key: &str,
    found: impl FnOnce() -> Result<Answer<T>, crate::stage::TaskError>,
) -> Response {
    if !s.state_queries {
        return (
            StatusCode::NOT_FOUND,
            "state queries are disabled (http.state_queries)\n",
        )
            .into_response();
    }
    let (status, partition, body) = match found() {
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Ok(Answer::Found(view)) => match serde_json::to_string_pretty(&view) {
            Ok(json) => {
                return ([(header::CONTENT_TYPE, "application/json")], json + "\n").into_response()
            }
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        },
        Ok(Answer::Missing { partition }) => (
            StatusCode::NOT_FOUND,
            partition,
            NotHere {
                error: "not found in its partition, which this instance runs",
                key,
                partition,
            },
        ),
        Ok(Answer::Elsewhere { partition }) => (
            StatusCode::NOT_FOUND,
            partition,
            NotHere {
                error: "partition not run by this instance",
                key,
                partition,
            },
        ),
    };
    let json = serde_json::to_string(&body).unwrap_or_default();
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (
                HeaderName::from_static(PARTITION_HEADER),
                partition.to_string(),
            ),
        ],
        json + "\n",
    )
        .into_response()
}

async fn sku(State(s): State<Served>, Path(sku): Path<String>) -> Response {
    let status = s.status.clone();
    answer(&s, &sku, || status.queries.sku(&sku))
}

async fn order(State(s): State<Served>, Path(order_id): Path<String>) -> Response {
    let status = s.status.clone();
    answer(&s, &order_id, || status.queries.order(&order_id))
}
