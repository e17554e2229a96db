//! Operating orderfold on tansu: a real Prometheus server scrapes `/metrics`, every metric
//! family is exported, `/readyz` follows a restore, and the state endpoints answer what
//! `orderfold inspect` answers or name the partition to ask elsewhere.

mod broker;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use broker::http::{free_port, get, spawn_served, sum_for_topic, wait_for};
use broker::process::{
    check, generate, orderfold, run_until_end, setup, setup_empty, wait_assigned, wait_committed,
    Running, SKU_PARTITIONS,
};
use orderfold::driver::topics;
use orderfold::partition::partition_for_key;

/// One number from Prometheus's HTTP API: the value of an instant query's single result.
fn prometheus_value(api: &str, query: &str) -> Option<f64> {
    let url = format!(
        "{api}/api/v1/query?query={}",
        query
            .replace('(', "%28")
            .replace(')', "%29")
            .replace('{', "%7B")
            .replace('}', "%7D")
            .replace('"', "%22")
            .replace('=', "%3D")
    );
    let (status, _, body) = get(&url).ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn a_real_prometheus_scrapes_processed_records_and_the_workloads_oversell_alerts() {
    let s = setup_empty(71, 3_000);
    let want = broker::expected(&s.records, &s.config, 3, 2);
    let alerts: usize = want.outputs[topics::OVERSELL_ALERTS]
        .values()
        .map(Vec::len)
        .sum();
    assert!(alerts > 0, "the workload raises no oversell alert");
    let (port, prom_port) = (free_port(), free_port());
    let state = tempfile::tempdir().unwrap();
    let (mut run, log) = spawn_served(&s.config_file, state.path(), port);
    if let Err(why) = wait_assigned(&log, Duration::from_secs(60)) {
        let _ = run.kill();
        panic!("{why}");
    }

    let prom_dir = tempfile::tempdir().unwrap();
    let prom_config = prom_dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: orderfold\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
    let _prometheus = Running(
        Command::new("prometheus")
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's package; scripts/test installs it)"),
    );
    let api = format!("http://127.0.0.1:{prom_port}");
    // Prometheus has scraped orderfold once before any input arrives.
    let first = wait_for(Duration::from_secs(60), "a first scrape", || {
        prometheus_value(&api, "sum(orderfold_records_processed_total)")
    });
    // The input arrives over several scrape intervals, as in production.
    check(
        generate(&s, Some(2_000)).output().unwrap(),
        "generate --kafka",
    );
    let expected_alerts = alerts as f64;
    let mut seen = BTreeSet::new();
    wait_for(
        Duration::from_secs(120),
        "Prometheus to see every oversell alert",
        || {
            if let Some(v) = prometheus_value(&api, "sum(orderfold_records_processed_total)") {
                seen.insert(v as u64);
            }
            (prometheus_value(&api, "sum(orderfold_alerts_total)")? == expected_alerts)
                .then_some(())
        },
    );
    let last = wait_for(Duration::from_secs(30), "processed total", || {
        prometheus_value(&api, "sum(orderfold_records_processed_total)")
    });
    assert!(
        last > first && seen.len() >= 2,
        "orderfold_records_processed_total did not grow: first {first}, seen {seen:?}, last {last}"
    );
    let oversold =
        prometheus_value(&api, r#"sum(orderfold_alerts_total{kind="oversold"})"#).unwrap_or(0.0);
    let by_kind_total: f64 = ["oversold", "reservation_rejected", "negative_available"]
        .iter()
        .filter_map(|k| {
            prometheus_value(
                &api,
                &format!(r#"sum(orderfold_alerts_total{{kind="{k}"}})"#),
            )
        })
        .sum();
    assert_eq!(
        by_kind_total, expected_alerts,
        "alerts by kind (oversold {oversold})"
    );
}

/// Every family the operations guide and the dashboard use, by name.
const FAMILIES: [&str; 25] = [
    "orderfold_records_consumed_total",
    "orderfold_records_processed_total",
    "orderfold_records_applied_total",
    "orderfold_records_dead_lettered_total",
    "orderfold_records_parked",
    "orderfold_records_produced_total",
    "orderfold_duplicates_total",
    "orderfold_ignored_total",
    "orderfold_dead_letters_total",
    "orderfold_alerts_total",
    "orderfold_expiries_total",
    "orderfold_commit_duration_seconds",
    "orderfold_commit_failures_total",
    "orderfold_delivery_failures_total",
    "orderfold_end_to_end_latency_seconds",
    "orderfold_consumer_lag_records",
    "orderfold_stream_time_seconds",
    "orderfold_active_reservations",
    "orderfold_tasks_assigned",
    "orderfold_restore_records_total",
    "orderfold_restore_remaining_records",
    "orderfold_rebalances_total",
    "orderfold_ready",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
];

#[test]
fn every_metric_family_is_exported_after_a_short_run() {
    let s = setup(73, 500);
    let port = free_port();
    let state = tempfile::tempdir().unwrap();
    let (mut run, log) = spawn_served(&s.config_file, state.path(), port);
    let total = broker::order_stage_records(&s.records);
    if let Err(why) = wait_committed(&log, total, Duration::from_secs(120)) {
        let _ = run.kill();
        panic!("{why}");
    }
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut missing = Vec::new();
    // The lag gauge follows librdkafka's next statistics report.
    let found = wait_for(Duration::from_secs(30), "every family", || {
        let (status, _, body) = get(&url).ok()?;
        assert_eq!(status, 200);
        missing = FAMILIES
            .iter()
            .filter(|f| !body.contains(&format!("# TYPE {f} ")))
            .copied()
            .collect();
        missing.is_empty().then_some(body)
    });
    assert!(missing.is_empty(), "missing families: {missing:?}");
    assert!(
        found.contains("orderfold_ready 1"),
        "not ready after the run"
    );
    // The books close per input topic: processed = applied + duplicates + ignored +
    // dead-lettered + parked (the gauges follow within a commit interval).
    let names = orderfold::kafka::TopicNames::from_config(&s.config);
    let mut books = String::new();
    wait_for(
        Duration::from_secs(30),
        "the accounting metrics to close",
        || {
            let (_, _, body) = get(&url).ok()?;
            books.clear();
            let mut all_close = true;
            for topic in names.inputs() {
                let [processed, applied, duplicates, ignored, dead, parked] = [
                    "orderfold_records_processed_total",
                    "orderfold_records_applied_total",
                    "orderfold_duplicates_total",
                    "orderfold_ignored_total",
                    "orderfold_records_dead_lettered_total",
                    "orderfold_records_parked",
                ]
                .map(|family| sum_for_topic(&body, family, topic));
                books.push_str(&format!(
                "{topic}: {processed} = {applied} + {duplicates} + {ignored} + {dead} + {parked}\n"
            ));
                all_close &=
                    processed > 0.0 && processed == applied + duplicates + ignored + dead + parked;
            }
            all_close.then_some(())
        },
    );
    eprintln!("{books}");
    let healthz = get(&format!("http://127.0.0.1:{port}/healthz")).unwrap();
    assert_eq!((healthz.0, healthz.2.as_str()), (200, "ok\n"));
    // The dashboard and the alert rules only use families orderfold exports.
    for file in [
        "config/grafana/orderfold.json",
        "config/prometheus/alerts.yml",
    ] {
        let text = std::fs::read_to_string(broker::process::repo().join(file)).unwrap();
        for name in metric_names(&text) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                found.contains(&format!("# TYPE {family} ")),
                "{file} uses {name}, which /metrics does not export"
            );
        }
    }
}

/// Every `orderfold_...` or `process_...` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    for prefix in ["orderfold_", "process_"] {
        for (at, _) in text.match_indices(prefix) {
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let end = text[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(text.len(), |n| at + n);
            names.insert(text[at..end].to_string());
        }
    }
    names
}

#[test]
fn readyz_is_503_while_tasks_restore_then_200_and_state_queries_match_inspect() {
    // A first instance processes everything, so the changelogs hold the whole state.
    let s = setup(79, 20_000);
    run_until_end(&s.config_file);
    // A second one on an empty disk restores it all before it is ready.
    let (b_port, c_port) = (free_port(), free_port());
    let (b_dir, c_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut b, _b_log) = spawn_served(&s.config_file, b_dir.path(), b_port);
    let readyz = format!("http://127.0.0.1:{b_port}/readyz");
    let mut restoring_seen = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            Instant::now() < deadline,
            "never ready; last 503: {restoring_seen:?}"
        );
        assert!(b.try_wait().unwrap().is_none(), "the instance exited");
        match get(&readyz) {
            Ok((503, _, body)) if body.contains("restoring") => restoring_seen = Some(body),
            Ok((200, _, _)) => break,
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let restoring = restoring_seen.expect("/readyz never answered 503 while restoring");
    assert!(restoring.starts_with("not ready: restoring"), "{restoring}");

    // Each SKU and order answered over HTTP is what `inspect` prints for the same state.
    let inspect = |dir: &Path, what: &str, id: &str| -> String {
        let out = orderfold(&s.config_file)
            .env("ORDERFOLD_STATE_DIR", dir)
            .args(["inspect", what, id])
            .output()
            .unwrap();
        String::from_utf8(check(out, "inspect").stdout).unwrap()
    };
    let want = broker::expected(&s.records, &s.config, 3, 2);
    let skus: Vec<String> = want.skus.iter().take(20).map(|v| v.sku.clone()).collect();
    let orders: Vec<String> = want
        .orders
        .iter()
        .take(5)
        .map(|v| v.order_id.clone())
        .collect();
    let inspected = |dir: &Path, sku: &str| -> serde_json::Value {
        serde_json::from_str(&inspect(dir, "sku", sku)).unwrap()
    };
    for sku in &skus {
        assert_eq!(
            sku_pages(b_port, sku),
            inspected(b_dir.path(), sku),
            "{sku}"
        );
    }
    for order in &orders {
        let url = format!("http://127.0.0.1:{b_port}/state/order/{order}");
        let (status, _, body) = get(&url).unwrap();
        assert_eq!(status, 200, "{order}: {body}");
        assert_eq!(body, inspect(b_dir.path(), "order", order), "{order}");
    }
    let (status, partition, _) =
        get(&format!("http://127.0.0.1:{b_port}/state/sku/no-such-sku")).unwrap();
    assert_eq!(status, 404);
    assert_eq!(
        partition,
        Some(partition_for_key(b"no-such-sku", SKU_PARTITIONS).to_string())
    );

    // A second instance takes some partitions: each SKU is answered by exactly one of them,
    // and the other names its partition.
    let (mut c, c_log) = spawn_served(&s.config_file, c_dir.path(), c_port);
    if let Err(why) = wait_assigned(&c_log, Duration::from_secs(120)) {
        let _ = c.kill();
        panic!("{why}");
    }
    let ask = |port: u16, sku: &str| get(&format!("http://127.0.0.1:{port}/state/sku/{sku}"));
    let split = wait_for(
        Duration::from_secs(120),
        "each SKU answered by exactly one instance",
        || {
            let mut answers = Vec::new();
            for sku in &skus {
                let (b_answer, c_answer) = (ask(b_port, sku).ok()?, ask(c_port, sku).ok()?);
                if (b_answer.0 == 200) == (c_answer.0 == 200) {
                    return None;
                }
                answers.push((sku.clone(), b_answer, c_answer));
            }
            Some(answers)
        },
    );
    let mut by_instance = [0, 0];
    for (sku, b_answer, c_answer) in split {
        let (other, owner_dir, owner_port) = if b_answer.0 == 200 {
            by_instance[0] += 1;
            (c_answer, b_dir.path(), b_port)
        } else {
            by_instance[1] += 1;
            (b_answer, c_dir.path(), c_port)
        };
        assert_eq!(other.0, 404, "{sku}");
        assert_eq!(
            other.1,
            Some(partition_for_key(sku.as_bytes(), SKU_PARTITIONS).to_string()),
            "{sku}"
        );
        assert_eq!(
            sku_pages(owner_port, &sku),
            inspected(owner_dir, &sku),
            "{sku}"
        );
    }
    assert!(
        by_instance[0] > 0 && by_instance[1] > 0,
        "one instance answered every SKU: {by_instance:?}"
    );
}

/// Every page of `/state/sku/{sku}` on `port`, followed through `next_after` and merged into
/// one view: what `inspect sku` prints for the same state. A hot SKU spans several pages.
fn sku_pages(port: u16, sku: &str) -> serde_json::Value {
    let mut whole: Option<serde_json::Value> = None;
    let mut after: Option<String> = None;
    loop {
        let url = match &after {
            Some(a) => format!("http://127.0.0.1:{port}/state/sku/{sku}?after={a}"),
            None => format!("http://127.0.0.1:{port}/state/sku/{sku}"),
        };
        let (status, _, body) = get(&url).unwrap();
        assert_eq!(status, 200, "{url}: {body}");
        let mut page: serde_json::Value = serde_json::from_str(&body).unwrap();
        let next = page
            .as_object_mut()
            .and_then(|o| o.remove("next_after"))
            .and_then(|n| n.as_str().map(String::from));
        match &mut whole {
            None => whole = Some(page),
            Some(w) => {
                let more = page["reservations"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                w["reservations"].as_object_mut().unwrap().extend(more);
            }
        }
        match next {
            Some(n) => after = Some(n),
            None => return whole.unwrap(),
        }
    }
}
