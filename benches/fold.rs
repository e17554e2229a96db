//! Fold throughput and decode cost, measured with criterion.
//!
//! - `fold/flash_sale`: a generated flash sale (Zipf SKUs, 20% payment failures, 10% abandoned
//!   carts, duplicates, scans) through both stages of the broker-free driver, one partition per
//!   stage, state on RocksDB in a temp dir: decode, merge, dedup, fold, state, commits, and the
//!   internal SKU commands' encode and decode. Single-threaded: one core.
//! - `fold/baseline_decode_put`: the same records decoded and each written once to RocksDB
//!   with a commit per 10,000 — the floor any stateful processor pays; the README reports the
//!   fold as a ratio of it.
//! - `decode/*`: Avro single-object decode of one record.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use orderfold::codec::Codec;
use orderfold::config::Config;
use orderfold::driver::{topics, Driver, Topology};
use orderfold::event::{InventoryEvent, LogisticsEvent, OrderEvent, PaymentEvent};
use orderfold::generate::{generate, WorkloadSpec};
use orderfold::state::{StateOptions, Store, TaskDb};

/// The same allocator as the `orderfold` binary, so the numbers are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ORDERS: usize = 40_000;

fn workload() -> Vec<(&'static str, Option<String>, Vec<u8>)> {
    let codec = Codec::new().unwrap();
    let spec = WorkloadSpec {
        orders: ORDERS,
        skus: 10_000,
        hot_skus: 10,
        malformed_ratio: 0.0,
        ..WorkloadSpec::default()
    };
    generate(&spec)
        .into_iter()
        .map(|g| {
            let v = g.encode(&codec).unwrap();
            (g.topic, g.key, v)
        })
        .collect()
}

fn fold(c: &mut Criterion) {
    let records = workload();
    let mut group = c.benchmark_group("fold");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("flash_sale", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let mut driver =
                    Driver::open(dir.path(), Topology::uniform(1), Config::default()).unwrap();
                for (topic, key, value) in &records {
                    driver
                        .pipe(
                            topic,
                            key.as_deref().map(str::as_bytes),
                            Some(value.clone()),
                        )
                        .unwrap();
                }
                (dir, driver)
            },
            |(dir, mut driver)| {
                driver.finish(10_000).unwrap();
                (dir, driver)
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("baseline_decode_put", |b| {
        let codec = Codec::new().unwrap();
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |dir| {
                let mut db =
                    TaskDb::open(dir.path(), &Store::ORDER_STAGE, &StateOptions::default())
                        .unwrap();
                for (i, (topic, key, value)) in records.iter().enumerate() {
                    let ok = match *topic {
                        topics::ORDERS => codec.decode::<OrderEvent>(value).is_ok(),
                        topics::PAYMENTS => codec.decode::<PaymentEvent>(value).is_ok(),
                        topics::LOGISTICS => codec.decode::<LogisticsEvent>(value).is_ok(),
                        _ => codec.decode::<InventoryEvent>(value).is_ok(),
                    };
                    if ok {
                        let k = key.clone().unwrap_or_default().into_bytes();
                        db.put_raw(Store::Orders, k, value.clone()).unwrap();
                    }
                    if i % 10_000 == 9_999 {
                        db.commit().unwrap();
                    }
                }
                db.commit().unwrap();
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn decode(c: &mut Criterion) {
    let records = workload();
    let codec = Codec::new().unwrap();
    let pick = |topic: &str| {
        records
            .iter()
            .find(|(t, _, _)| *t == topic)
            .map(|(_, _, v)| v.clone())
            .unwrap()
    };
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    let placed = records
        .iter()
        .find(|(t, _, v)| {
            *t == topics::ORDERS
                && matches!(
                    codec.decode::<OrderEvent>(v).map(|e| e.body),
                    Ok(orderfold::event::OrderBody::OrderPlaced(_))
                )
        })
        .map(|(_, _, v)| v.clone())
        .unwrap();
    group.bench_function("order_placed", |b| {
        b.iter(|| {
            codec
                .decode::<OrderEvent>(std::hint::black_box(&placed))
                .unwrap()
        })
    });
    let payment = pick(topics::PAYMENTS);
    group.bench_function("payment", |b| {
        b.iter(|| {
            codec
                .decode::<PaymentEvent>(std::hint::black_box(&payment))
                .unwrap()
        })
    });
    let scan = pick(topics::LOGISTICS);
    group.bench_function("scan", |b| {
        b.iter(|| {
            codec
                .decode::<LogisticsEvent>(std::hint::black_box(&scan))
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, fold, decode);
criterion_main!(benches);
