//! orderfold speaks Avro as other libraries do: its schema fingerprints, its single-object
//! headers and its encodings equal fastavro's, and records fastavro wrote are read and folded.
//! The fixtures in tests/fixtures/fastavro/ were made by `scripts/avro-fixtures` (fastavro,
//! Python) and are committed, so this test needs no Python.

use std::path::{Path, PathBuf};

use orderfold::codec::{self, AvroRecord, Codec, RecordKind};
use orderfold::config::Config;
use orderfold::driver::{topics, Driver, Topology};
use orderfold::event::{InventoryEvent, LogisticsEvent, OrderEvent, PaymentEvent};
use serde::de::DeserializeOwned;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fastavro")
}

fn json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn short_name(kind: RecordKind) -> &'static str {
    let name = kind.full_name();
    name.rsplit('.').next().unwrap_or(name)
}

#[test]
fn every_schemas_fingerprint_and_header_equal_fastavros() {
    let expected = json("fingerprints.json");
    let headers = orderfold::compare::single_object_headers().unwrap();
    for kind in RecordKind::ALL {
        let name = short_name(kind);
        let want = &expected[name];
        let schema = apache_avro::Schema::parse_str(kind.schema_text()).unwrap();
        assert_eq!(
            orderfold::canonical::canonical_form(&schema).unwrap(),
            want["canonical_form"].as_str().unwrap(),
            "canonical form of {name}"
        );
        let fp: String = codec::fingerprint(&schema)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            fp,
            want["fingerprint"].as_str().unwrap(),
            "fingerprint of {name}"
        );
        assert_eq!(
            headers[name],
            want["single_object_header"].as_str().unwrap(),
            "single-object header of {name}"
        );
    }
}

/// Decodes a fastavro record as `T`, checks it holds the values fastavro wrote, and that
/// orderfold writes the same value to the same bytes.
fn read_back<T: AvroRecord + DeserializeOwned + PartialEq + std::fmt::Debug>(
    codec: &Codec,
    bytes: &[u8],
    value: &Value,
) -> T {
    let decoded: T = codec.decode(bytes).unwrap();
    let written: T = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(decoded, written);
    assert_eq!(
        codec.encode(&decoded).unwrap(),
        bytes,
        "orderfold's encoding"
    );
    decoded
}

#[test]
fn records_fastavro_wrote_are_read_with_their_values_and_folded() {
    let codec = Codec::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut driver = Driver::open(dir.path(), Topology::uniform(2), Config::default()).unwrap();
    let manifest = json("records.json");
    let records = manifest.as_array().unwrap();
    assert!(records.len() >= 4, "the fixtures hold every input kind");
    for r in records {
        let file = r["file"].as_str().unwrap();
        let bytes = std::fs::read(fixtures().join(file)).unwrap();
        let value = &r["value"];
        let (topic, key) = match r["schema"].as_str().unwrap() {
            "OrderEvent" => {
                let e: OrderEvent = read_back(&codec, &bytes, value);
                (topics::ORDERS, e.order_id)
            }
            "PaymentEvent" => {
                let e: PaymentEvent = read_back(&codec, &bytes, value);
                (topics::PAYMENTS, e.order_id)
            }
            "LogisticsEvent" => {
                let e: LogisticsEvent = read_back(&codec, &bytes, value);
                (topics::LOGISTICS, e.order_id)
            }
            "InventoryEvent" => {
                let e: InventoryEvent = read_back(&codec, &bytes, value);
                (topics::INVENTORY, e.sku)
            }
            other => panic!("{file}: unexpected schema {other}"),
        };
        driver
            .pipe(topic, Some(key.as_bytes()), Some(bytes))
            .unwrap();
    }
    driver.finish(100).unwrap();
    let dead: Vec<_> = driver
        .dead_letters()
        .iter()
        .map(|r| (r.headers.clone(), r.origin_offset))
        .collect();
    assert!(
        dead.iter().all(|(headers, _)| headers
            .iter()
            .all(|(k, v)| k != "reason" || v.as_slice() == b"orphan")),
        "only the fixtures' orphans (ord-fa-2 has no OrderPlaced) are dead-lettered: {dead:?}"
    );
    // ord-fa-1 (placed, captured, in transit) bought 2 of sku-fa-1 (50 received) and 1 of
    // sku-fa-2 (counted at 10).
    let one = driver.sku("sku-fa-1").unwrap().unwrap();
    assert_eq!((one.on_hand, one.reserved), (48, 0));
    assert_eq!(one.on_hand_by_warehouse.get("wh-fa-1"), Some(&50));
    let two = driver.sku("sku-fa-2").unwrap().unwrap();
    assert_eq!((two.on_hand, two.reserved), (9, 0));
}

#[test]
fn a_record_with_the_fingerprint_orderfold_0_1_wrote_still_reads() {
    let codec = Codec::new().unwrap();
    let bytes = std::fs::read(fixtures().join("order_placed.bin")).unwrap();
    let schema = apache_avro::Schema::parse_str(RecordKind::OrderEvent.schema_text()).unwrap();
    let legacy = schema.fingerprint::<apache_avro::rabin::Rabin>();
    assert_ne!(
        &legacy.bytes[..8],
        &bytes[2..10],
        "the old fingerprint differs from the specification's"
    );
    let mut old = bytes[..2].to_vec();
    old.extend_from_slice(&legacy.bytes[..8]);
    old.extend_from_slice(&bytes[10..]);
    let a: OrderEvent = codec.decode(&old).unwrap();
    let b: OrderEvent = codec.decode(&bytes).unwrap();
    assert_eq!(a, b);
    assert_eq!(codec.kind_of(&old).unwrap(), RecordKind::OrderEvent);
}
