//! Confluent wire format on the embedded broker: input framed with a zero byte and a 4-byte
//! schema id, resolved through static ids in the config or a schema registry, decodes to the
//! same events as single-object input; output can be framed the same way.

mod broker;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use orderfold::codec::{reframe_confluent, RecordKind};
use orderfold::config::{Config, WireFormat};
use orderfold::driver::topics;
use orderfold::inspect::LocalState;
use orderfold::kafka::{self, TopicNames};
use orderfold::runtime::{self, Mode, Shutdown, Status};
use rdkafka::mocking::MockCluster;

fn schema_file(kind: RecordKind) -> PathBuf {
    let name = kind.full_name().trim_start_matches("orderfold.");
    broker::process::repo().join(format!("schemas/{name}.avsc"))
}

/// The record kind of an input topic of the driver's naming.
fn input_kind(topic: &str) -> Option<RecordKind> {
    match topic {
        topics::ORDERS => Some(RecordKind::OrderEvent),
        topics::PAYMENTS => Some(RecordKind::PaymentEvent),
        topics::LOGISTICS => Some(RecordKind::LogisticsEvent),
        topics::INVENTORY => Some(RecordKind::InventoryEvent),
        _ => None,
    }
}

fn cluster_config(
    cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    state: &std::path::Path,
) -> Config {
    let config = broker::config(&cluster.bootstrap_servers(), state, 2, 2);
    kafka::create_on_mock(cluster, &config).unwrap();
    config
}

fn run_until_end(config: &Config) -> runtime::RunReport {
    runtime::run(
        config,
        Mode::UntilEnd,
        Shutdown::default(),
        Arc::new(Status::unobserved().unwrap()),
    )
    .unwrap()
}

/// A record's datum without its framing (single-object or Confluent); other bytes as they are.
fn datum(value: &[u8]) -> &[u8] {
    match value {
        [0xC3, 0x01, ..] if value.len() >= 10 => &value[10..],
        [0, ..] if value.len() >= 5 => &value[5..],
        _ => value,
    }
}

const STATIC_IDS: [(RecordKind, u32); 4] = [
    (RecordKind::OrderEvent, 101),
    (RecordKind::PaymentEvent, 102),
    (RecordKind::LogisticsEvent, 103),
    (RecordKind::InventoryEvent, 104),
];

fn id_of(kind: RecordKind, ids: &[(RecordKind, u32)]) -> u32 {
    ids.iter().find(|(k, _)| *k == kind).unwrap().1
}

#[test]
fn confluent_framed_input_decodes_to_the_same_events_as_single_object_input() {
    let cluster = MockCluster::new(1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut config = cluster_config(&cluster, state.path());
    for (kind, id) in STATIC_IDS {
        config
            .avro
            .schema_ids
            .insert(id.to_string(), schema_file(kind));
    }
    let (_, records) = broker::workload(31, 2_000);
    // Every other record in Confluent framing: detection is per record.
    broker::produce_framed(&config, &records, |i, topic, value| {
        if i % 2 == 0 {
            return value;
        }
        let id = id_of(input_kind(topic).unwrap(), &STATIC_IDS);
        reframe_confluent(&value, id).unwrap()
    });
    let report = run_until_end(&config);
    assert_eq!(
        report.processed_this_run,
        broker::order_stage_records(&records)
    );
    for (topic, a) in &report.accounting {
        assert!(a.closes(), "accounting of {topic} does not close: {a:?}");
        assert_eq!(
            a.dead_lettered.get("schema").copied().unwrap_or(0),
            0,
            "{topic}: a Confluent record was not resolved"
        );
    }
    // Same state, same outputs, same dead letters as the driver fed single-object input. A
    // dead letter keeps its record's original bytes, so those compare without their framing.
    let mut want = broker::expected(&records, &config, 2, 2);
    let mut got = broker::actual(&config, false);
    for outcome in [&mut want, &mut got] {
        for (_, _, value) in &mut outcome.dead_letters {
            *value = datum(value).to_vec();
        }
        outcome.dead_letters.sort();
    }
    broker::assert_same(&got, &want);
}

/// A schema registry speaking the two calls orderfold makes: a schema by id, and registering a
/// schema under a subject. Ids registered start at 9001.
#[derive(Clone, Default)]
struct FakeRegistry {
    schemas: Arc<Mutex<BTreeMap<u32, String>>>,
    subjects: Arc<Mutex<BTreeMap<String, u32>>>,
    lookups: Arc<Mutex<Vec<u32>>>,
}

async fn schema_by_id(
    State(r): State<FakeRegistry>,
    Path(id): Path<u32>,
) -> Result<Json<serde_json::Value>, StatusCode> {
    r.lookups.lock().unwrap().push(id);
    let schemas = r.schemas.lock().unwrap();
    let text = schemas.get(&id).ok_or(StatusCode::NOT_FOUND)?;
    Ok(Json(serde_json::json!({ "schema": text })))
}

async fn register(
    State(r): State<FakeRegistry>,
    Path(subject): Path<String>,
    Json(body): Json<serde_json::Value>,
) -> Json<serde_json::Value> {
    let text = body["schema"].as_str().unwrap().to_string();
    let mut subjects = r.subjects.lock().unwrap();
    let mut schemas = r.schemas.lock().unwrap();
    let next = 9001 + subjects.len() as u32;
    let id = *subjects.entry(subject).or_insert(next);
    schemas.insert(id, text);
    Json(serde_json::json!({ "id": id }))
}

/// Serves `registry` on a free loopback port until the returned runtime is dropped.
fn serve(registry: FakeRegistry) -> (String, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/subjects/{subject}/versions", post(register))
        .with_state(registry);
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        axum::serve(listener, app).await.unwrap();
    });
    (url, rt)
}

#[test]
fn schema_ids_resolve_through_a_registry_and_outputs_are_framed_with_registered_ids() {
    let registry = FakeRegistry::default();
    const REGISTRY_IDS: [(RecordKind, u32); 4] = [
        (RecordKind::OrderEvent, 501),
        (RecordKind::PaymentEvent, 502),
        (RecordKind::LogisticsEvent, 503),
        (RecordKind::InventoryEvent, 504),
    ];
    for (kind, id) in REGISTRY_IDS {
        registry
            .schemas
            .lock()
            .unwrap()
            .insert(id, kind.schema_text().to_string());
    }
    let (url, _server) = serve(registry.clone());
    let cluster = MockCluster::new(1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut config = cluster_config(&cluster, state.path());
    config.avro.schema_registry_url = url;
    config.avro.output_format = WireFormat::Confluent;
    let (_, records) = broker::workload(37, 1_500);
    broker::produce_framed(&config, &records, |_, topic, value| {
        let id = id_of(input_kind(topic).unwrap(), &REGISTRY_IDS);
        reframe_confluent(&value, id).unwrap()
    });
    let report = run_until_end(&config);
    for (topic, a) in &report.accounting {
        assert!(a.closes(), "accounting of {topic} does not close: {a:?}");
        assert_eq!(a.dead_lettered.get("schema").copied().unwrap_or(0), 0);
    }
    // Each id was asked for once, however many records carried it.
    let mut lookups = registry.lookups.lock().unwrap().clone();
    lookups.sort();
    assert_eq!(lookups, vec![501, 502, 503, 504]);

    // Outputs: registered under <topic>-value, and framed with that id. Their datums are the
    // driver's, byte for byte.
    let want = broker::expected(&records, &config, 2, 2);
    let names = TopicNames::from_config(&config);
    let subjects = registry.subjects.lock().unwrap().clone();
    for t in [
        topics::RESERVATION_EXPIRY,
        topics::TRACKING_STATUS,
        topics::OVERSELL_ALERTS,
    ] {
        let name = names.external(t).unwrap();
        let id = subjects[&format!("{name}-value")];
        let mut got: BTreeMap<Option<Vec<u8>>, Vec<Vec<u8>>> = BTreeMap::new();
        for r in kafka::read_to_end(&config, name).unwrap() {
            got.entry(r.key).or_default().push(r.value.unwrap());
        }
        let expected: BTreeMap<_, Vec<Vec<u8>>> = want.outputs[t]
            .iter()
            .map(|(k, vs)| {
                let framed = vs
                    .iter()
                    .map(|v| reframe_confluent(v, id).unwrap())
                    .collect();
                (k.clone(), framed)
            })
            .collect();
        assert!(!expected.is_empty(), "the workload produced no {t}");
        assert_eq!(got, expected, "{t}");
    }
    let local = LocalState::open(&config).unwrap();
    assert_eq!(local.skus().unwrap(), want.skus);
    assert_eq!(local.orders().unwrap(), want.orders);
}
