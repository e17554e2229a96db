//! Helpers for the tests that run orderfold on a broker: a config with random topic and group
//! names, the expected result from the broker-free driver fed the same log, and the actual
//! result read back from the broker's topics and the task state.
#![allow(dead_code)]

pub mod http;
pub mod process;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use orderfold::codec::Codec;
use orderfold::config::Config;
use orderfold::driver::{topics, Driver, Record, Topology};
use orderfold::event::{OversellAlert, ReservationExpired, TrackingStatus};
use orderfold::generate::{generate, Generated, WorkloadSpec};
use orderfold::inspect::LocalState;
use orderfold::kafka::{self, ReadRecord, TopicNames};
use orderfold::stage::order::OrderView;
use orderfold::stage::sku::SkuView;

/// A name part no other test (in this process or another) uses: pid, clock and a counter.
pub fn unique_tag() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{:x}{:x}{}",
        std::process::id(),
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A config whose topics and group are named for this test alone.
pub fn config(
    bootstrap: &str,
    state_dir: &Path,
    order_partitions: u32,
    sku_partitions: u32,
) -> Config {
    let tag = unique_tag();
    let mut c = Config::default();
    c.kafka.bootstrap_servers = bootstrap.to_string();
    c.kafka.application_id = format!("of-{tag}");
    c.state.dir = state_dir.to_path_buf();
    c.topics.orders = format!("orders-{tag}");
    c.topics.payments = format!("payments-{tag}");
    c.topics.logistics = format!("logistics-{tag}");
    c.topics.inventory = format!("inventory-{tag}");
    c.topics.reservation_expiry = format!("reservation-expiry-{tag}");
    c.topics.tracking_status = format!("tracking-status-{tag}");
    c.topics.oversell_alerts = format!("oversell-alerts-{tag}");
    c.topics.order_partitions = order_partitions;
    c.topics.sku_partitions = sku_partitions;
    c.runtime.wall_clock_advance = false;
    // Instances of parallel tests would all want the default port; a test that scrapes or
    // queries one sets ORDERFOLD_HTTP_BIND to a free port.
    c.http.bind = String::new();
    c
}

/// Writes a config as a TOML file for a child process.
pub fn write_config(config: &Config, path: &Path) {
    std::fs::write(path, toml::to_string(config).unwrap()).unwrap();
}

pub fn workload_spec(seed: u64, orders: usize) -> WorkloadSpec {
    WorkloadSpec {
        seed,
        orders,
        skus: 200,
        ..WorkloadSpec::default()
    }
}

pub fn workload(seed: u64, orders: usize) -> (WorkloadSpec, Vec<Generated>) {
    let spec = workload_spec(seed, orders);
    let records = generate(&spec);
    (spec, records)
}

/// How many records the order stage reads (everything but inventory).
pub fn order_stage_records(records: &[Generated]) -> u64 {
    records
        .iter()
        .filter(|r| r.topic != topics::INVENTORY)
        .count() as u64
}

/// Outputs keyed for comparison: per output topic, per key, the values in log order.
pub type ByKey = BTreeMap<String, BTreeMap<Option<Vec<u8>>, Vec<Vec<u8>>>>;

/// A run's result, in a form two runs can be compared in.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub outputs: ByKey,
    /// (reason, key, value) of each dead letter, sorted: dead letters carry their origin's
    /// offset, which the driver reports as an index, so only these are comparable.
    pub dead_letters: Vec<(String, Option<Vec<u8>>, Vec<u8>)>,
    pub skus: Vec<SkuView>,
    pub orders: Vec<OrderView>,
}

const OUTPUTS: [&str; 3] = [
    topics::RESERVATION_EXPIRY,
    topics::TRACKING_STATUS,
    topics::OVERSELL_ALERTS,
];

pub fn header(headers: &[(String, Vec<u8>)], name: &str) -> String {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// One input record as bytes: the driver's topic name, key and value, as a producer sends it
/// (bad input included: no key, no value, bytes that are no record).
#[derive(Debug, Clone, Default)]
pub struct RawRecord {
    pub topic: &'static str,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// A partition of the producer's choosing (a record without a key lands anywhere).
    pub partition: Option<i32>,
}

/// The workload's records as bytes, encoded with orderfold's own schemas.
pub fn encode_all(records: &[Generated]) -> Vec<RawRecord> {
    let codec = Codec::new().unwrap();
    records
        .iter()
        .map(|r| RawRecord {
            topic: r.topic,
            key: r.key.clone().map(String::into_bytes),
            value: Some(r.encode(&codec).unwrap()),
            partition: None,
        })
        .collect()
}

/// What the broker-free driver computes from the same log, with the same partition counts.
pub fn expected(records: &[Generated], config: &Config, order_p: u32, sku_p: u32) -> Outcome {
    expected_raw(&encode_all(records), config, order_p, sku_p)
}

/// `expected` for a log given as bytes.
pub fn expected_raw(records: &[RawRecord], config: &Config, order_p: u32, sku_p: u32) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let topology = Topology {
        order_partitions: order_p,
        sku_partitions: sku_p,
    };
    let mut driver = Driver::open(dir.path(), topology, config.clone()).unwrap();
    for r in records {
        driver
            .pipe(r.topic, r.key.as_deref(), r.value.clone())
            .unwrap();
    }
    driver.finish(config.limits.commit_records_max).unwrap();
    let mut outputs = ByKey::new();
    for t in OUTPUTS {
        let per_key = outputs.entry(t.to_string()).or_default();
        for r in driver.records(t) {
            per_key
                .entry(r.key.clone())
                .or_default()
                .push(r.value.clone().unwrap_or_default());
        }
    }
    let mut dead_letters: Vec<_> = driver
        .dead_letters()
        .into_iter()
        .map(|r: &Record| {
            (
                header(&r.headers, "reason"),
                r.key.clone(),
                r.value.clone().unwrap_or_default(),
            )
        })
        .collect();
    dead_letters.sort();
    Outcome {
        outputs,
        dead_letters,
        skus: driver.skus().unwrap(),
        orders: driver.orders().unwrap(),
    }
}

/// Produces records given as bytes to the config's topics, in order, and waits for every
/// acknowledgement.
pub fn produce_raw(config: &Config, records: &[RawRecord]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let names = TopicNames::from_config(config);
    let producer: BaseProducer<kafka::Acks> = kafka::producer_config(config)
        .create_with_context(kafka::Acks::default())
        .unwrap();
    for r in records {
        let mut record: BaseRecord<[u8], [u8], usize> =
            BaseRecord::with_opaque_to(names.external(r.topic).unwrap(), 0);
        record.key = r.key.as_deref();
        record.payload = r.value.as_deref();
        record.partition = r.partition;
        while let Err((e, back)) = producer.send(record) {
            assert_eq!(
                e.rdkafka_error_code(),
                Some(rdkafka::types::RDKafkaErrorCode::QueueFull),
                "{e}"
            );
            record = back;
            producer.poll(std::time::Duration::from_millis(10));
        }
    }
    producer.flush(kafka::REQUEST_TIMEOUT).unwrap();
    producer.context().take_failures().unwrap();
}

/// Every output topic as read from the broker, by the driver's topic names.
pub fn read_outputs(config: &Config) -> BTreeMap<&'static str, Vec<ReadRecord>> {
    let names = TopicNames::from_config(config);
    let mut all = BTreeMap::new();
    for t in OUTPUTS.into_iter().chain([topics::DLQ]) {
        let name = names.external(t).unwrap();
        all.insert(t, kafka::read_to_end(config, name).unwrap());
    }
    all
}

/// The event id of an output record, decoded with the schema of its topic.
pub fn event_id(codec: &Codec, topic: &str, value: &[u8]) -> String {
    match topic {
        topics::RESERVATION_EXPIRY => codec.decode::<ReservationExpired>(value).unwrap().event_id,
        topics::TRACKING_STATUS => codec.decode::<TrackingStatus>(value).unwrap().event_id,
        topics::OVERSELL_ALERTS => codec.decode::<OversellAlert>(value).unwrap().event_id,
        other => panic!("no event id on {other}"),
    }
}

/// The result read back from the broker and the task state. With `allow_duplicates`, a
/// repeated output (same event id) must be byte-identical to its first copy and is then
/// dropped, and dead letters are compared as a set: what an at-least-once run after crashes
/// may legitimately repeat. Without it, any repetition fails.
pub fn actual(config: &Config, allow_duplicates: bool) -> Outcome {
    let codec = Codec::new().unwrap();
    let read = read_outputs(config);
    let mut outputs = ByKey::new();
    let mut repeated = 0;
    for t in OUTPUTS {
        let per_key = outputs.entry(t.to_string()).or_default();
        let mut first: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for r in &read[t] {
            let value = r.value.clone().unwrap_or_default();
            let id = event_id(&codec, t, &value);
            if let Some(earlier) = first.get(&id) {
                assert_eq!(
                    earlier, &value,
                    "a repeated {t} output {id} differs from its first copy"
                );
                repeated += 1;
                continue;
            }
            first.insert(id, value.clone());
            per_key.entry(r.key.clone()).or_default().push(value);
        }
    }
    if repeated > 0 {
        eprintln!("{repeated} outputs repeated byte-identically after crashes");
    }
    assert!(
        allow_duplicates || repeated == 0,
        "{repeated} outputs were produced twice in a run without crashes"
    );
    let mut dead_letters: Vec<_> = read[topics::DLQ]
        .iter()
        .map(|r| {
            (
                header(&r.headers, "reason"),
                r.key.clone(),
                r.value.clone().unwrap_or_default(),
            )
        })
        .collect();
    dead_letters.sort();
    if allow_duplicates {
        // A dead letter has no event id; the (topic, partition, offset) it came from is its
        // identity, so count each origin once.
        let mut seen = BTreeSet::new();
        let mut unique: Vec<_> = read[topics::DLQ]
            .iter()
            .filter(|r| {
                seen.insert((
                    header(&r.headers, "topic"),
                    header(&r.headers, "partition"),
                    header(&r.headers, "offset"),
                ))
            })
            .map(|r| {
                (
                    header(&r.headers, "reason"),
                    r.key.clone(),
                    r.value.clone().unwrap_or_default(),
                )
            })
            .collect();
        unique.sort();
        dead_letters = unique;
    }
    let state = LocalState::open(config).unwrap();
    Outcome {
        outputs,
        dead_letters,
        skus: state.skus().unwrap(),
        orders: state.orders().unwrap(),
    }
}

/// The state and outputs found for `config` equal the driver's on `records` (outputs with
/// byte-identical repeats dropped when `allow_duplicates`).
pub fn assert_matches_driver(
    records: &[Generated],
    config: &Config,
    order_p: u32,
    sku_p: u32,
    allow_duplicates: bool,
) {
    let want = expected(records, config, order_p, sku_p);
    let got = actual(config, allow_duplicates);
    assert_same(&got, &want);
}

/// Compares two outcomes part by part, so a failure says which part differs.
pub fn assert_same(actual: &Outcome, expected: &Outcome) {
    for (topic, want) in &expected.outputs {
        let got = actual.outputs.get(topic).cloned().unwrap_or_default();
        let total: usize = want.values().map(Vec::len).sum();
        assert!(total > 0, "the workload produced no {topic} outputs");
        assert_eq!(
            got.len(),
            want.len(),
            "{topic}: number of keys with outputs"
        );
        for (key, values) in want {
            if got.get(key) == Some(values) {
                continue;
            }
            // Decoded only for the failure message.
            let codec = Codec::new().unwrap();
            let shown = |values: Option<&Vec<Vec<u8>>>| {
                values.map(|values| {
                    values
                        .iter()
                        .map(|value| readable(&codec, topic, value))
                        .collect::<Vec<_>>()
                })
            };
            assert_eq!(
                shown(got.get(key)),
                shown(Some(values)),
                "{topic}: outputs for key {:?}",
                key.as_deref().map(String::from_utf8_lossy)
            );
        }
    }
    assert_eq!(actual.dead_letters, expected.dead_letters, "dead letters");
    assert_eq!(actual.skus.len(), expected.skus.len(), "number of SKUs");
    for (a, e) in actual.skus.iter().zip(&expected.skus) {
        assert_eq!(a, e, "state of {}", e.sku);
    }
    assert_eq!(
        actual.orders.len(),
        expected.orders.len(),
        "number of orders"
    );
    for (a, e) in actual.orders.iter().zip(&expected.orders) {
        assert_eq!(a, e, "state of order {}", e.order_id);
    }
}

/// An output record as its decoded value, so a failed comparison says what differs.
fn readable(codec: &Codec, topic: &str, value: &[u8]) -> String {
    let decoded = match topic {
        topics::RESERVATION_EXPIRY => codec
            .decode::<ReservationExpired>(value)
            .map(|v| format!("{v:?}")),
        topics::TRACKING_STATUS => codec
            .decode::<TrackingStatus>(value)
            .map(|v| format!("{v:?}")),
        topics::OVERSELL_ALERTS => codec
            .decode::<OversellAlert>(value)
            .map(|v| format!("{v:?}")),
        _ => return format!("{value:?}"),
    };
    decoded.unwrap_or_else(|e| format!("undecodable ({e}): {value:?}"))
}

/// Produces the workload to the config's topics, each record framed by
/// `frame(index, driver topic, single-object bytes)` (malformed records stay as they are).
pub fn produce_framed(
    config: &Config,
    records: &[Generated],
    frame: impl Fn(usize, &str, Vec<u8>) -> Vec<u8>,
) {
    let codec = Codec::new().unwrap();
    let names = TopicNames::from_config(config);
    let encoded: Vec<_> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let value = r.encode(&codec).unwrap();
            // A malformed record of the workload stays as it is.
            let value = if codec.kind_of(&value).is_ok() {
                frame(i, r.topic, value)
            } else {
                value
            };
            (
                names.external(r.topic).unwrap().to_string(),
                r.key.clone(),
                value,
            )
        })
        .collect();
    kafka::produce_all(
        config,
        encoded.iter().map(|(t, k, v)| {
            (
                t.as_str(),
                k.as_deref().map(str::as_bytes),
                Some(v.as_slice()),
            )
        }),
        None,
        |_| {},
    )
    .unwrap();
}

/// The `message.max.bytes` of the producer in the too-large tests: below a 5 KB dead letter and
/// an 8 KB parked-events value, above everything else a run writes.
pub const TOO_LARGE_BYTES: usize = 4_096;

/// A log with two records a producer limited to `TOO_LARGE_BYTES` must refuse: an output's
/// dead letter (a 5 KB malformed value, kept whole) and a state value's changelog record (80
/// events of about 100 bytes parked for one unknown order).
pub fn too_large_log() -> Vec<RawRecord> {
    use orderfold::event::{PaymentBody, PaymentCaptured, PaymentEvent};
    let codec = Codec::new().unwrap();
    let payment = |i: usize| PaymentEvent {
        event_id: format!("ev-pay-{i}"),
        order_id: "o-ghost".into(),
        payment_id: format!("pay-{i}"),
        occurred_at: 1_767_225_600_000 + i as i64,
        body: PaymentBody::PaymentCaptured(PaymentCaptured {
            amount_minor: 1999,
            currency: "EUR".into(),
        }),
    };
    let record = |topic, key: &str, value| RawRecord {
        topic,
        key: Some(key.as_bytes().to_vec()),
        value: Some(value),
        partition: None,
    };
    let mut log = vec![record(topics::ORDERS, "o-big", vec![b'x'; 5_000])];
    log.extend((0..80).map(|i| {
        record(
            topics::PAYMENTS,
            "o-ghost",
            codec.encode(&payment(i)).unwrap(),
        )
    }));
    log
}

/// Each record of `too_large_log` went out as a small stub dead letter (reason `validation`,
/// header `stub` = `too_large`) naming where it was going, and nothing larger was written.
pub fn assert_too_large_stubs(config: &Config) {
    let outputs = read_outputs(config);
    let stubs: Vec<String> = outputs[topics::DLQ]
        .iter()
        .filter(|r| header(&r.headers, "stub") == "too_large")
        .map(|r| header(&r.headers, "topic"))
        .collect();
    let names = TopicNames::from_config(config);
    assert!(
        stubs.contains(&names.dead_letters),
        "no stub for the dead letter: {stubs:?}"
    );
    assert!(
        stubs.iter().any(|t| t.ends_with("-changelog")),
        "no stub for the changelog record: {stubs:?}"
    );
    assert!(outputs[topics::DLQ]
        .iter()
        .all(|r| r.value.as_ref().is_none_or(|v| v.len() < TOO_LARGE_BYTES)));
}
