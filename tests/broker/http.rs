//! Helpers for the tests that talk to a running instance over HTTP: a free port, a GET that
//! tolerates a server not listening yet, waiting on a condition with a deadline, and sums over
//! a metrics exposition.

use std::path::Path;
use std::time::{Duration, Instant};

use super::process::{spawn_run_logged, Running};

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `url`: status, the partition header if any, and the body. Connection errors are an
/// `Err`: the server may not listen yet.
pub fn get(url: &str) -> Result<(u16, Option<String>, String), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
    let partition = response
        .headers()
        .get(orderfold::http::PARTITION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((status, partition, body))
}

/// Polls `probe` until it returns Some, or fails naming `what` after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A live instance serving HTTP on `port`, its state in `state_dir`.
pub fn spawn_served(
    config_file: &Path,
    state_dir: &Path,
    port: u16,
) -> (Running, std::sync::mpsc::Receiver<String>) {
    spawn_run_logged(
        config_file,
        &[],
        &[
            ("ORDERFOLD_HTTP_BIND", &format!("127.0.0.1:{port}")),
            ("ORDERFOLD_STATE_DIR", state_dir.to_str().unwrap()),
            ("ORDERFOLD_METRICS_LAG_INTERVAL_MS", "500"),
            // A member that joins or leaves moves partitions in seconds, not 45.
            ("ORDERFOLD_LIBRDKAFKA_SESSION_TIMEOUT_MS", "6000"),
            ("ORDERFOLD_LIBRDKAFKA_HEARTBEAT_INTERVAL_MS", "1000"),
        ],
    )
}

/// The sum of a family's samples whose `topic` label is `topic`, in a text exposition.
pub fn sum_for_topic(body: &str, family: &str, topic: &str) -> f64 {
    let label = format!("topic=\"{topic}\"");
    body.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
