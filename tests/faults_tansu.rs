//! Bad input and faults on tansu, with the binary in child processes: a corpus of broken
//! records is dead-lettered with its reasons while the valid records around it apply, evolved
//! writer schemas are read and incompatible ones dead-lettered, a 30 s broker outage is
//! survived, a record too large for the producer becomes a stub dead letter, and SASL/SCRAM
//! logins work, fail clearly, and leak no secret.

mod broker;
mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use broker::http::{free_port, get, wait_for};
use broker::process::{
    check, orderfold, repo, run_until_end, setup_empty, spawn_run_logged, terminate,
    wait_committed, Tansu, ORDER_PARTITIONS, SKU_PARTITIONS,
};
use broker::RawRecord;
use orderfold::codec::Codec;
use orderfold::driver::topics;
use orderfold::event::*;
use support::{logistics_schema_version, scan_written_with, Scenario, T0};

/// `scripts/tansu ACTION DIR ARGS...`, which must succeed.
fn tansu_script(action: &str, tansu: &Tansu, args: &[&str]) {
    let status = Command::new(repo().join("scripts/tansu"))
        .arg(action)
        .arg(tansu.dir.path())
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "scripts/tansu {action} failed");
}

/// A record of the corpus: what is sent, and the dead-letter reason it must get.
struct Bad {
    what: &'static str,
    /// Valid records sent before it, which make it one too many.
    before: Vec<RawRecord>,
    record: RawRecord,
    reason: &'static str,
}

fn bad(
    what: &'static str,
    topic: &'static str,
    key: Option<&str>,
    value: Option<Vec<u8>>,
    reason: &'static str,
) -> Bad {
    Bad {
        what,
        before: Vec::new(),
        record: RawRecord {
            topic,
            key: key.map(|k| k.as_bytes().to_vec()),
            value,
            partition: None,
        },
        reason,
    }
}

fn inventory_event(
    id: &str,
    sku: &str,
    wh: &str,
    t: Millis,
    body: InventoryBody,
) -> InventoryEvent {
    InventoryEvent {
        event_id: id.into(),
        sku: sku.into(),
        warehouse_id: wh.into(),
        occurred_at: t,
        body,
    }
}

/// Every kind of bad record the issue names: undecodable bytes, an unknown schema, a missing
/// key, each rule violation, and each configured limit exceeded (limits as in `limited`).
fn corpus(codec: &Codec) -> Vec<Bad> {
    let placed = |id: &str, order: &str, lines: &[(&str, i32)], t: Millis| {
        codec
            .encode(&Scenario::placed_event(id, order, lines, t))
            .unwrap()
    };
    let valid = placed("c-trunc", "bad-1", &[("sku-1", 1)], T0);
    let mut unknown_fingerprint = vec![0xC3, 0x01, 9, 9, 9, 9, 9, 9, 9, 9];
    unknown_fingerprint.extend_from_slice(&valid[10..]);
    // Seeded noise that starts like neither framing.
    let mut noise = vec![0x7f];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..63 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.push(x as u8);
    }
    let mut oversized = placed("c-big", "bad-big", &[("sku-1", 1)], T0);
    oversized.resize(4_097, 0);
    let mut no_payment_id = Scenario::payment_event("c-pay", "bad-pay", T0, true);
    no_payment_id.payment_id = String::new();
    let inventory = |id: &str, sku: &str, wh: &str, body| {
        codec
            .encode(&inventory_event(id, sku, wh, T0, body))
            .unwrap()
    };
    let received = |q| InventoryBody::StockReceived(StockReceived { quantity: q });
    let mut corpus = vec![
        bad(
            "truncated Avro",
            topics::ORDERS,
            Some("bad-1"),
            Some(valid[..valid.len() / 2].to_vec()),
            "decode",
        ),
        bad(
            "unknown fingerprint",
            topics::PAYMENTS,
            Some("bad-2"),
            Some(unknown_fingerprint),
            "schema",
        ),
        bad(
            "random bytes",
            topics::LOGISTICS,
            Some("bad-3"),
            Some(noise),
            "decode",
        ),
        bad(
            "empty value",
            topics::ORDERS,
            Some("bad-4"),
            Some(Vec::new()),
            "decode",
        ),
        bad(
            "null value",
            topics::INVENTORY,
            Some("sku-1"),
            None,
            "decode",
        ),
        bad(
            "null key",
            topics::ORDERS,
            None,
            Some(placed("c-nokey", "bad-5", &[("sku-1", 1)], T0)),
            "validation",
        ),
        bad(
            "key differs from order_id",
            topics::ORDERS,
            Some("someone-else"),
            Some(placed("c-key", "bad-6", &[("sku-1", 1)], T0)),
            "validation",
        ),
        bad(
            "no lines",
            topics::ORDERS,
            Some("bad-7"),
            Some(placed("c-nolines", "bad-7", &[], T0)),
            "validation",
        ),
        bad(
            "zero quantity",
            topics::ORDERS,
            Some("bad-8"),
            Some(placed("c-zero", "bad-8", &[("sku-1", 0)], T0)),
            "validation",
        ),
        bad(
            "empty sku",
            topics::ORDERS,
            Some("bad-9"),
            Some(placed("c-nosku", "bad-9", &[("", 1)], T0)),
            "validation",
        ),
        bad(
            "empty event id",
            topics::ORDERS,
            Some("bad-10"),
            Some(placed("", "bad-10", &[("sku-1", 1)], T0)),
            "validation",
        ),
        bad(
            "time zero",
            topics::ORDERS,
            Some("bad-11"),
            Some(placed("c-t0", "bad-11", &[("sku-1", 1)], 0)),
            "validation",
        ),
        bad(
            "empty payment id",
            topics::PAYMENTS,
            Some("bad-pay"),
            Some(codec.encode(&no_payment_id).unwrap()),
            "validation",
        ),
        bad(
            "stock received of 0",
            topics::INVENTORY,
            Some("sku-1"),
            Some(inventory("c-inv1", "sku-1", "wh-1", received(0))),
            "validation",
        ),
        bad(
            "negative count",
            topics::INVENTORY,
            Some("sku-1"),
            Some(inventory(
                "c-inv2",
                "sku-1",
                "wh-1",
                InventoryBody::StockCounted(StockCounted { on_hand: -1 }),
            )),
            "validation",
        ),
        bad(
            "empty warehouse",
            topics::INVENTORY,
            Some("sku-1"),
            Some(inventory("c-inv3", "sku-1", "", received(1))),
            "validation",
        ),
        bad(
            "over order_lines_max",
            topics::ORDERS,
            Some("bad-12"),
            Some(placed("c-lines", "bad-12", &[("sku-1", 1); 11], T0)),
            "validation",
        ),
        bad(
            "over quantity_max",
            topics::ORDERS,
            Some("bad-13"),
            Some(placed("c-qty", "bad-13", &[("sku-1", 1_001)], T0)),
            "validation",
        ),
        bad(
            "over string_bytes_max",
            topics::ORDERS,
            Some(&"o".repeat(65)),
            Some(placed("c-str", &"o".repeat(65), &[("sku-1", 1)], T0)),
            "validation",
        ),
        bad(
            "over record_bytes_max",
            topics::ORDERS,
            Some("bad-big"),
            Some(oversized),
            "validation",
        ),
        bad(
            "stock over quantity_max",
            topics::INVENTORY,
            Some("sku-1"),
            Some(inventory("c-inv4", "sku-1", "wh-1", received(1_001))),
            "validation",
        ),
        // Its dead letter, key and detail (which quotes the key) copied whole, would be 1.2 MB:
        // more than the producer's message.max.bytes, refused on every retry.
        bad(
            "a 600 KB key that differs from order_id",
            topics::ORDERS,
            Some(&"k".repeat(600_000)),
            Some(placed("c-hugekey", "bad-15", &[("sku-1", 1)], T0)),
            "validation",
        ),
    ];
    // A record without a key lands on the producer's choice of partition; its dead letter goes
    // to the dead-letter topic's partitions, however few. Put one on the last partition.
    let mut keyless = bad(
        "null key on the last partition",
        topics::PAYMENTS,
        None,
        Some(
            codec
                .encode(&Scenario::payment_event("c-nokey2", "bad-14", T0, true))
                .unwrap(),
        ),
        "validation",
    );
    keyless.record.partition = Some(ORDER_PARTITIONS as i32 - 1);
    corpus.push(keyless);
    // Per-key state that grows with input is bounded (limits as in `limited`): a fourth event
    // waiting for one unknown order, a fourth warehouse of one SKU.
    let payment = |id: &str| {
        codec
            .encode(&Scenario::payment_event(id, "bad-orphans", T0, true))
            .unwrap()
    };
    let mut orphans = bad(
        "over orphans_per_order_max",
        topics::PAYMENTS,
        Some("bad-orphans"),
        Some(payment("c-orphan-4")),
        "validation",
    );
    orphans.before = (1..=3)
        .map(|i| RawRecord {
            topic: topics::PAYMENTS,
            key: Some(b"bad-orphans".to_vec()),
            value: Some(payment(&format!("c-orphan-{i}"))),
            partition: None,
        })
        .collect();
    corpus.push(orphans);
    let mut warehouses = bad(
        "over warehouses_per_sku_max",
        topics::INVENTORY,
        Some("sku-wh"),
        Some(inventory("c-wh-4", "sku-wh", "wh-4", received(1))),
        "validation",
    );
    warehouses.before = (1..=3)
        .map(|i| RawRecord {
            topic: topics::INVENTORY,
            key: Some(b"sku-wh".to_vec()),
            value: Some(inventory(
                &format!("c-wh-{i}"),
                "sku-wh",
                &format!("wh-{i}"),
                received(1),
            )),
            partition: None,
        })
        .collect();
    corpus.push(warehouses);
    corpus
}

/// Limits the workload's own records stay within and the corpus exceeds.
fn limited(config: &mut orderfold::config::Config) {
    config.limits.record_bytes_max = 4_096;
    config.limits.order_lines_max = 10;
    config.limits.string_bytes_max = 64;
    config.limits.quantity_max = 1_000;
    config.limits.orphans_per_order_max = 3;
    config.limits.warehouses_per_sku_max = 3;
}

/// The workload with the groups of `extra` spread through it, one group every `len / extra`
/// records (a group's records stay together).
fn interleave(workload: Vec<RawRecord>, extra: Vec<Vec<RawRecord>>) -> Vec<RawRecord> {
    let every = (workload.len() / (extra.len() + 1)).max(1);
    let mut extra = extra.into_iter();
    let mut all = Vec::new();
    for (i, r) in workload.into_iter().enumerate() {
        if i % every == every - 1 {
            all.extend(extra.next().into_iter().flatten());
        }
        all.push(r);
    }
    all.extend(extra.flatten());
    all
}

/// Runs a live instance over `log` until it has processed every order-stage record and its
/// dead-letter metric counts, per reason, what the driver dead-letters; checks it is still
/// running, stops it with SIGTERM, and finishes the SKU stage with a bounded run. Returns the
/// bounded run's report.
fn run_live_then_finish(s: &broker::process::Setup, log: &[RawRecord]) -> serde_json::Value {
    broker::produce_raw(&s.config, log);
    let want = broker::expected_raw(log, &s.config, ORDER_PARTITIONS, SKU_PARTITIONS);
    let mut by_reason: BTreeMap<String, f64> = BTreeMap::new();
    for (reason, _, _) in &want.dead_letters {
        *by_reason.entry(reason.clone()).or_default() += 1.0;
    }
    let order_stage = log.iter().filter(|r| r.topic != topics::INVENTORY).count() as u64;
    let bind = format!("127.0.0.1:{}", free_port());
    let (mut run, lines) = spawn_run_logged(
        &s.config_file,
        &[],
        &[("ORDERFOLD_HTTP_BIND", bind.as_str())],
    );
    if let Err(why) = wait_committed(&lines, order_stage, Duration::from_secs(120)) {
        panic!("{why}");
    }
    let mut seen = BTreeMap::new();
    wait_for(Duration::from_secs(30), "dead-letter metrics", || {
        let (_, _, body) = get(&format!("http://{bind}/metrics")).ok()?;
        seen = by_reason
            .keys()
            .map(|reason| {
                let line = format!("orderfold_dead_letters_total{{reason=\"{reason}\"}} ");
                let n = body
                    .lines()
                    .find_map(|l| l.strip_prefix(&line)?.parse::<f64>().ok())
                    .unwrap_or(0.0);
                (reason.clone(), n)
            })
            .collect();
        (seen == by_reason).then_some(())
    });
    assert!(
        run.try_wait().unwrap().is_none(),
        "orderfold exited on bad input"
    );
    assert!(terminate(&mut run, &s.config).success());
    let out = run_until_end(&s.config_file);
    broker::process::report(&out.stdout)
}

/// Each record of a topic is accounted for once: per input topic of the report, consumed =
/// applied + duplicates + ignored + dead-lettered + parked, and consumed is what was sent.
fn assert_books_close(
    report: &serde_json::Value,
    log: &[RawRecord],
    config: &orderfold::config::Config,
) {
    let names = orderfold::kafka::TopicNames::from_config(config);
    let mut sent: BTreeMap<&str, u64> = BTreeMap::new();
    for r in log {
        *sent.entry(names.external(r.topic).unwrap()).or_default() += 1;
    }
    for (topic, n) in sent {
        let a: orderfold::stage::Accounting =
            serde_json::from_value(report["accounting"][topic].clone()).unwrap();
        assert!(a.closes(), "{topic}: the books do not close: {a:?}");
        assert_eq!(a.consumed, n, "{topic}: consumed vs sent");
    }
}

#[test]
fn a_bad_input_corpus_through_the_broker_is_dead_lettered_with_its_reasons_and_the_rest_applied() {
    let mut s = setup_empty(131, 300);
    limited(&mut s.config);
    broker::write_config(&s.config, &s.config_file);
    let codec = Codec::new().unwrap();
    let corpus = corpus(&codec);
    let workload = broker::encode_all(&s.records);
    let log = interleave(
        workload.clone(),
        corpus
            .iter()
            .map(|b| b.before.iter().chain([&b.record]).cloned().collect())
            .collect(),
    );
    let report = run_live_then_finish(&s, &log);
    assert_books_close(&report, &log, &s.config);

    // Each bad record is in the dead-letter topic, with its reason, its original key and
    // bytes, and headers naming where it came from.
    let read = broker::read_outputs(&s.config);
    let names = orderfold::kafka::TopicNames::from_config(&s.config);
    // A key or value beyond limits.dead_letter_bytes_max is kept cut to it.
    let kept = s.config.limits.dead_letter_bytes_max;
    let cut = |bytes: &Option<Vec<u8>>| {
        bytes.clone().map(|mut b| {
            b.truncate(kept);
            b
        })
    };
    for b in &corpus {
        let (key, value) = (cut(&b.record.key), cut(&b.record.value).unwrap_or_default());
        let found = read[topics::DLQ]
            .iter()
            .find(|r| r.key == key && r.value.clone().unwrap_or_default() == value)
            .unwrap_or_else(|| panic!("{}: not dead-lettered", b.what));
        let h = |name: &str| broker::header(&found.headers, name);
        let key_bytes = b.record.key.as_ref().map_or(0, Vec::len);
        if key_bytes > kept {
            assert_eq!(h("key_bytes"), key_bytes.to_string(), "{}", b.what);
        }
        assert!(
            h("detail").len() <= orderfold::sink::DETAIL_BYTES_MAX,
            "{}: a detail of {} bytes",
            b.what,
            h("detail").len()
        );
        assert_eq!(
            h("reason"),
            b.reason,
            "{}: reason ({})",
            b.what,
            h("detail")
        );
        assert!(!h("detail").is_empty(), "{}: no detail", b.what);
        assert_eq!(
            h("topic"),
            names.external(b.record.topic).unwrap(),
            "{}",
            b.what
        );
        assert!(h("offset").parse::<i64>().is_ok() && h("partition").parse::<i32>().is_ok());
        if b.what.starts_with("over ") || b.what.ends_with("over quantity_max") {
            let limit = b.what.rsplit(' ').next().unwrap();
            assert!(h("detail").contains(limit), "{}: {}", b.what, h("detail"));
        }
    }
    // Everything equals the broker-free driver on the same log; and the valid records came
    // through as if the corpus had not been there: outputs and state equal the driver's on
    // the workload alone.
    let got = broker::actual(&s.config, false);
    let want = broker::expected_raw(&log, &s.config, ORDER_PARTITIONS, SKU_PARTITIONS);
    broker::assert_same(&got, &want);
    let clean = broker::expected_raw(&workload, &s.config, ORDER_PARTITIONS, SKU_PARTITIONS);
    assert_eq!(
        got.outputs, clean.outputs,
        "outputs differ from the workload alone"
    );
    // The corpus's own valid stock (the three warehouses of sku-wh) aside.
    let skus: Vec<_> = got.skus.iter().filter(|v| v.sku != "sku-wh").collect();
    assert_eq!(
        skus,
        clean.skus.iter().collect::<Vec<_>>(),
        "SKU state differs from the workload alone"
    );
    assert_eq!(
        got.orders, clean.orders,
        "order state differs from the workload alone"
    );
    // Orphans aside: the events parked for the unknown order expire as orphans or not,
    // depending on how far the workload's time runs past them.
    let not_orphans = |o: &broker::Outcome| {
        o.dead_letters
            .iter()
            .filter(|(reason, _, _)| reason != "orphan")
            .count()
    };
    assert_eq!(
        not_orphans(&got),
        not_orphans(&clean) + corpus.len(),
        "dead letters beyond the corpus and the workload's own malformed records"
    );
}

#[test]
fn an_evolved_writer_schema_is_applied_and_an_incompatible_one_dead_lettered_through_the_broker() {
    let mut s = setup_empty(137, 200);
    // Producers moved on: one version adds an optional `carrier`, another sends `status` as a
    // string, which no resolution can read as the enum. Both are configured.
    let added = logistics_schema_version(
        &[],
        Some(serde_json::json!({"name": "carrier", "type": ["null", "string"], "default": null})),
    );
    let incompatible = logistics_schema_version(
        &["status"],
        Some(serde_json::json!({"name": "status", "type": "string"})),
    );
    for (name, text) in [("added.avsc", &added), ("incompatible.avsc", &incompatible)] {
        let path = s.state.path().join(name);
        std::fs::write(&path, text).unwrap();
        s.config.avro.writer_schemas.push(path);
    }
    broker::write_config(&s.config, &s.config_file);
    let codec = Codec::new().unwrap();
    // Orders of their own, each followed by a scan written with a new version.
    let created = apache_avro::types::Value::Enum(0, "CREATED".into());
    let mut orders = Vec::new();
    let mut evolved = Vec::new();
    let mut refused = Vec::new();
    for i in 0..6 {
        let order = format!("ev-{i}");
        let placed =
            Scenario::placed_event(&format!("ev-placed-{i}"), &order, &[("sku-ev", 1)], T0);
        orders.push(RawRecord {
            topic: topics::ORDERS,
            key: Some(order.clone().into_bytes()),
            value: Some(codec.encode(&placed).unwrap()),
            partition: None,
        });
        let id = format!("ev-scan-{i}");
        let raw = |value| RawRecord {
            topic: topics::LOGISTICS,
            key: Some(order.clone().into_bytes()),
            value: Some(value),
            partition: None,
        };
        if i % 2 == 0 {
            evolved.push((
                order.clone(),
                raw(scan_written_with(
                    &added,
                    &id,
                    &order,
                    T0 + 1,
                    created.clone(),
                    true,
                )),
            ));
        } else {
            let status = apache_avro::types::Value::String("CREATED".into());
            refused.push(raw(scan_written_with(
                &incompatible,
                &id,
                &order,
                T0 + 1,
                status,
                false,
            )));
        }
    }
    let extra: Vec<RawRecord> = orders
        .into_iter()
        .chain(evolved.iter().map(|(_, r)| r.clone()))
        .chain(refused.iter().cloned())
        .collect();
    // After the whole workload, so each scan follows its order.
    let mut log = broker::encode_all(&s.records);
    log.extend(extra);
    let report = run_live_then_finish(&s, &log);
    assert_books_close(&report, &log, &s.config);
    let got = broker::actual(&s.config, false);
    broker::assert_same(
        &got,
        &broker::expected_raw(&log, &s.config, ORDER_PARTITIONS, SKU_PARTITIONS),
    );
    // The evolved scans were applied: their orders have tracking from them.
    let state = orderfold::inspect::LocalState::open(&s.config).unwrap();
    for (order, _) in &evolved {
        let view = state.order(order).unwrap().expect("order state");
        let tracking = view.tracking.expect("tracking from the evolved scan");
        assert_eq!(tracking.status, TrackingCode::CREATED, "{order}");
    }
    // The incompatible ones are dead letters with reason `schema`.
    let read = broker::read_outputs(&s.config);
    for raw in &refused {
        let found = read[topics::DLQ]
            .iter()
            .find(|r| r.value == raw.value)
            .expect("the incompatible scan is dead-lettered");
        assert_eq!(broker::header(&found.headers, "reason"), "schema");
        assert!(broker::header(&found.headers, "detail").contains("cannot be read"));
    }
}

/// A record larger than the producer takes (`message.max.bytes` below a dead letter and a
/// changelog record the run must write) goes out as a small stub dead letter, and the run
/// finishes instead of retrying the batch for good: the binary on tansu, as a user runs it.
#[test]
fn a_record_too_large_for_the_producer_becomes_a_stub_dead_letter_on_tansu() {
    let (_tansu, _state, mut config, file) = broker::process::empty_broker();
    broker::process::topics_create(&file);
    broker::produce_raw(&config, &broker::too_large_log());
    config.kafka.properties.insert(
        "message.max.bytes".into(),
        broker::TOO_LARGE_BYTES.to_string(),
    );
    broker::write_config(&config, &file);
    let mut run = orderfold(&file)
        .args(["run", "--until-end"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Past the limit the run is killed and the test fails: it retried the refused records.
    let status = broker::process::wait_exit(&mut run, Duration::from_secs(120));
    assert!(status.success(), "run --until-end: {status}");
    broker::assert_too_large_stubs(&config);
}

#[test]
fn a_broker_stopped_for_30_s_mid_run_is_survived_and_the_result_equals_the_driver() {
    let mut s = setup_empty(139, 13_000);
    // Commits fail within the outage, so the retry path runs.
    s.config.runtime.produce_ack_timeout_ms = 10_000;
    s.config.runtime.retry_backoff_ms = 200;
    s.config.runtime.retry_backoff_max_ms = 2_000;
    broker::write_config(&s.config, &s.config_file);
    // The whole log is there before orderfold starts: the broker goes away while orderfold
    // works through it, with nothing else writing.
    let log = broker::encode_all(&s.records);
    broker::produce_raw(&s.config, &log);
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let (mut run, lines) = spawn_run_logged(
        &s.config_file,
        &[],
        &[
            ("ORDERFOLD_HTTP_BIND", bind.as_str()),
            ("ORDERFOLD_METRICS_LAG_INTERVAL_MS", "500"),
        ],
    );
    let total = log.iter().filter(|r| r.topic != topics::INVENTORY).count() as u64;
    if let Err(why) = wait_committed(&lines, 5_000, Duration::from_secs(120)) {
        panic!("{why}");
    }
    let readyz = format!("http://{bind}/readyz");
    wait_for(Duration::from_secs(30), "ready before the outage", || {
        (get(&readyz).ok()?.0 == 200).then_some(())
    });
    tansu_script("stop", &s.tansu, &[]);
    let stopped = Instant::now();
    let why = wait_for(
        Duration::from_secs(25),
        "/readyz 503 with the broker away",
        || {
            let (status, _, body) = get(&readyz).ok()?;
            (status == 503).then_some(body)
        },
    );
    assert!(
        why.contains("no broker reachable") || why.contains("commit failed"),
        "{why}"
    );
    while stopped.elapsed() < Duration::from_secs(30) {
        assert!(
            run.try_wait().unwrap().is_none(),
            "orderfold exited while the broker was away"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    tansu_script("restart", &s.tansu, &[]);
    // It resumes by itself, finishes the input and is ready again.
    if let Err(why) = wait_committed(&lines, total, Duration::from_secs(240)) {
        panic!("{why}");
    }
    wait_for(Duration::from_secs(60), "ready after the outage", || {
        (get(&readyz).ok()?.0 == 200).then_some(())
    });
    let (_, _, metrics) = get(&format!("http://{bind}/metrics")).unwrap();
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("orderfold_commit_failures_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(failures >= 1.0, "no commit failed during the outage");
    assert!(run.try_wait().unwrap().is_none());
    assert!(terminate(&mut run, &s.config).success());
    // The SKU stage's last commands wait for a watermark a bounded run gives them.
    run_until_end(&s.config_file);
    // At least once: outputs of the dropped batches may repeat, byte-identical.
    broker::assert_matches_driver(
        &s.records,
        &s.config,
        ORDER_PARTITIONS,
        SKU_PARTITIONS,
        true,
    );
}

#[test]
fn sasl_scram_a_wrong_password_fails_clearly_and_the_right_one_works_without_leaking_it() {
    let s = setup_empty(149, 200);
    let user = "orderfold-svc";
    let right = format!("right-{}", broker::unique_tag());
    let wrong = format!("wrong-{}", broker::unique_tag());
    tansu_script("user", &s.tansu, &[user, &right]);
    tansu_script("stop", &s.tansu, &[]);
    tansu_script("restart", &s.tansu, &["--authentication"]);
    // The login in the config file, the password from the environment, as an operator keeps
    // secrets out of files.
    let mut config = s.config.clone();
    for (k, v) in [
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", user),
    ] {
        config.kafka.properties.insert(k.into(), v.into());
    }
    broker::write_config(&config, &s.config_file);
    let leaks = |text: &str| text.contains(&right) || text.contains(&wrong);

    let started = Instant::now();
    let out = orderfold(&s.config_file)
        .env("ORDERFOLD_LIBRDKAFKA_SASL_PASSWORD", &wrong)
        .env("RUST_LOG", "debug")
        .args(["topics", "create"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong password was accepted");
    assert!(
        stderr.contains("authentication failed") && stderr.contains("SASL"),
        "no clear error: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the failure took {:?}, as long as a timeout",
        started.elapsed()
    );
    assert!(!leaks(&stderr) && !leaks(&String::from_utf8_lossy(&out.stdout)));

    // The right password: the whole job runs, and no output, log line, metric or inspect
    // answer carries it.
    let with_password = |args: &[&str]| {
        let out = orderfold(&s.config_file)
            .env("ORDERFOLD_LIBRDKAFKA_SASL_PASSWORD", &right)
            .env("RUST_LOG", "debug")
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!leaks(&text), "{args:?} printed the password");
        check(out, &args.join(" "))
    };
    with_password(&["topics", "create"]);
    // The test's own clients log in too.
    let mut client = config.clone();
    client
        .kafka
        .properties
        .insert("sasl.password".into(), right.clone());
    broker::produce_raw(&client, &broker::encode_all(&s.records));
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let (mut run, lines) = spawn_run_logged(
        &s.config_file,
        &[],
        &[
            ("ORDERFOLD_LIBRDKAFKA_SASL_PASSWORD", right.as_str()),
            ("ORDERFOLD_HTTP_BIND", bind.as_str()),
        ],
    );
    let total = broker::order_stage_records(&s.records);
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    // Keep every line to search for the password afterwards.
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("orderfold committed everything in time");
        let done = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .is_some_and(|e| {
                e["fields"]["message"] == "committed"
                    && e["fields"]["processed"].as_u64().unwrap_or(0) >= total
            });
        log.push(line);
        if done {
            break;
        }
    }
    let (status, _, metrics) = get(&format!("http://{bind}/metrics")).unwrap();
    assert_eq!(status, 200);
    assert!(!leaks(&metrics), "/metrics carries the password");
    let sku = s
        .records
        .iter()
        .find(|r| r.topic == topics::INVENTORY)
        .and_then(|r| r.key.clone())
        .unwrap();
    let (_, _, answer) = get(&format!("http://{bind}/state/sku/{sku}")).unwrap();
    assert!(!leaks(&answer));
    assert!(terminate(&mut run, &config).success());
    // Every line up to the exit: the reader ends when the exited child's stderr closes.
    log.extend(lines.iter());
    assert!(!leaks(&log.join("\n")), "the log carries the password");
    let inspect = with_password(&["inspect", "all"]);
    assert!(!String::from_utf8_lossy(&inspect.stdout).is_empty());
    with_password(&["run", "--until-end"]);
    broker::assert_matches_driver(&s.records, &client, ORDER_PARTITIONS, SKU_PARTITIONS, false);
}
