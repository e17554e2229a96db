//! The HTTP server beside the poll loop: `/metrics` (Prometheus text format), `/healthz`,
//! `/readyz` and the read-only state queries `/state/sku/{sku}` and `/state/order/{order_id}`.
//! It only reads what the runtime publishes in its `Status`, on its own threads, so a slow
//! client never slows processing and a stalled loop is still reported.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};

use crate::config::HttpConfig;
use crate::query::Answer;
use crate::runtime::Status;

/// The header that names the partition of a queried key, so a proxy can route on it.
pub const PARTITION_HEADER: &str = "x-orderfold-partition";

#[derive(Clone)]
struct Served {
    status: Arc<Status>,
    state_queries: bool,
    state_page_records_max: usize,
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
        state_page_records_max: config.state_page_records_max.max(1),
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

/// `?limit=&after=` of `/state/sku/{sku}`: at most `limit` reservations (capped at
/// `http.state_page_records_max`, which is also the default), those after order id `after`.
#[derive(Deserialize)]
struct Page {
    limit: Option<usize>,
    after: Option<String>,
}

async fn sku(
    State(s): State<Served>,
    Path(sku): Path<String>,
    Query(page): Query<Page>,
) -> Response {
    let max = s.state_page_records_max;
    let limit = page.limit.unwrap_or(max).clamp(1, max);
    off_worker(move || {
        let queries = &s.status.queries;
        answer(&s, &sku, || queries.sku(&sku, page.after.as_deref(), limit))
    })
    .await
}

async fn order(State(s): State<Served>, Path(order_id): Path<String>) -> Response {
    off_worker(move || answer(&s, &order_id, || s.status.queries.order(&order_id))).await
}

/// Runs a state query on tokio's blocking pool: RocksDB reads must not hold the server's
/// worker, which also answers `/metrics` and the probes.
async fn off_worker(query: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(query)
        .await
        .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::state::Stage;
    use std::io::{Read, Write};

    fn get(addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (
            status,
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// `/state/sku/{sku}` answers a page: at most `http.state_page_records_max` reservations,
    /// fewer with `?limit=`, and `?after=` with the answer's `next_after` reads on.
    #[test]
    fn the_sku_query_answers_a_page_and_its_successor() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::stage::sku::hot_sku_db(dir.path(), "A", 25);
        let status = Arc::new(Status::new(Metrics::new(true).unwrap()));
        status.queries.set_layout(1, 1);
        status.queries.add(Stage::Sku, 0, db.reader());
        let config = HttpConfig {
            bind: "127.0.0.1:0".into(),
            state_page_records_max: 20,
            ..HttpConfig::default()
        };
        let listener = bind(&config).unwrap().unwrap();
        let addr = listener.local_addr().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(async move { serve(listener, &config, status).await });

        let reservations = |v: &serde_json::Value| v["reservations"].as_object().unwrap().len();
        let (code, first) = get(addr, "/state/sku/A");
        assert_eq!(code, 200);
        assert_eq!(reservations(&first), 20, "the page is capped by the config");
        assert_eq!(first["next_after"], "o-00019");
        let (_, rest) = get(addr, "/state/sku/A?after=o-00019");
        assert_eq!(reservations(&rest), 5);
        assert!(
            rest.get("next_after").is_none(),
            "the last page names no successor"
        );
        let (_, small) = get(addr, "/state/sku/A?limit=3&after=o-00010");
        let keys: Vec<&String> = small["reservations"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["o-00011", "o-00012", "o-00013"]);
        assert_eq!(small["next_after"], "o-00013");
        let (code, _) = get(addr, "/state/sku/A?limit=many");
        assert_eq!(code, 400, "a limit that is not a number is refused");
        runtime.shutdown_background();
    }
}
