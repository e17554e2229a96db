//! A byte fuzzer over the decoders and the fold's entry point, driven by proptest: random bytes
//! and mutations of valid records (bit flips, truncation, trailing bytes, both framings) go to
//! every decoder and through the broker-free driver. Nothing may panic, and every record must
//! be accounted for. It runs for `ORDERFOLD_FUZZ_SECONDS` (10 s by default; `scripts/test` gives
//! it 60 s), each round from a new seed that a failure prints, so a crash can be reproduced.

mod broker;

use std::time::{Duration, Instant};

use orderfold::codec::{reframe_confluent, Codec};
use orderfold::config::Config;
use orderfold::driver::{topics, Driver, Topology};
use orderfold::event::{
    InventoryEvent, LogisticsEvent, OrderEvent, OversellAlert, PaymentEvent, ReservationExpired,
    SkuCommand, TrackingStatus, Watermark,
};
use orderfold::generate::{generate, WorkloadSpec};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};

/// Valid records of every input kind, to mutate: most bugs hide behind a valid header.
fn valid_records() -> Vec<(&'static str, Option<String>, Vec<u8>)> {
    let codec = Codec::new().unwrap();
    let spec = WorkloadSpec {
        seed: 5,
        orders: 60,
        ..WorkloadSpec::default()
    };
    generate(&spec)
        .into_iter()
        .map(|r| {
            let value = r.encode(&codec).unwrap();
            (r.topic, r.key.clone(), value)
        })
        .collect()
}

/// Schema ids a Confluent-framed mutation may carry, 1 to 4, one per input kind.
fn confluent_config() -> Config {
    let mut config = Config::default();
    let root = broker::process::repo();
    for (id, name) in [
        "OrderEvent",
        "PaymentEvent",
        "LogisticsEvent",
        "InventoryEvent",
    ]
    .iter()
    .enumerate()
    {
        config.avro.schema_ids.insert(
            (id + 1).to_string(),
            root.join(format!("schemas/{name}.avsc")),
        );
    }
    config
}

/// One fuzzed value: random bytes, or a valid record mutated.
#[derive(Debug, Clone)]
enum Input {
    Random(Vec<u8>),
    Mutated {
        record: usize,
        confluent_id: Option<u32>,
        flips: Vec<(usize, u8)>,
        cut: Option<usize>,
        tail: Vec<u8>,
    },
}

fn input(records: usize) -> impl Strategy<Value = Input> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Input::Random),
        (
            0..records,
            proptest::option::of(0u32..6),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            proptest::option::of(any::<usize>()),
            proptest::collection::vec(any::<u8>(), 0..3),
        )
            .prop_map(|(record, confluent_id, flips, cut, tail)| Input::Mutated {
                record,
                confluent_id,
                flips,
                cut,
                tail,
            }),
    ]
}

fn bytes_of(input: &Input, records: &[(&'static str, Option<String>, Vec<u8>)]) -> Vec<u8> {
    match input {
        Input::Random(b) => b.clone(),
        Input::Mutated {
            record,
            confluent_id,
            flips,
            cut,
            tail,
        } => {
            let valid = &records[*record].2;
            let mut b = match confluent_id {
                Some(id) => reframe_confluent(valid, *id).unwrap_or_else(|| valid.clone()),
                None => valid.clone(),
            };
            if !b.is_empty() {
                for (at, x) in flips {
                    let i = at % b.len();
                    b[i] ^= x;
                }
            }
            if let Some(cut) = cut {
                b.truncate(cut % (b.len() + 1));
            }
            b.extend_from_slice(tail);
            b
        }
    }
}

/// Runs `round` on proptest inputs from new seeds until the time is up.
fn for_a_while(
    what: &str,
    cases: u32,
    mut round: impl FnMut(&mut TestRunner) -> Result<(), String>,
) {
    let seconds: u64 = std::env::var("ORDERFOLD_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut rounds = 0u64;
    while Instant::now() < deadline {
        let seed: [u8; 32] = std::array::from_fn(|i| (rounds >> ((i % 8) * 8)) as u8 ^ i as u8);
        let mut runner = TestRunner::new_with_rng(
            RunnerConfig {
                cases,
                failure_persistence: None,
                ..RunnerConfig::default()
            },
            TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
        );
        if let Err(e) = round(&mut runner) {
            panic!("{what}, round {rounds} (seed {seed:?}): {e}");
        }
        rounds += 1;
    }
    assert!(rounds > 0, "{what}: no round ran");
    eprintln!("{what}: {rounds} rounds of {cases} cases in {seconds} s");
}

#[test]
fn no_byte_sequence_makes_a_decoder_panic() {
    let records = valid_records();
    let codecs = [
        Codec::new().unwrap(),
        Codec::from_config(&confluent_config()).unwrap(),
    ];
    for_a_while("decoders", 2_000, |runner| {
        runner
            .run(&input(records.len()), |i| {
                let b = bytes_of(&i, &records);
                for codec in &codecs {
                    let _ = codec.kind_of(&b);
                    let _ = codec.resolve(&b);
                    let _ = codec.decode::<OrderEvent>(&b);
                    let _ = codec.decode::<PaymentEvent>(&b);
                    let _ = codec.decode::<LogisticsEvent>(&b);
                    let _ = codec.decode::<InventoryEvent>(&b);
                    let _ = codec.decode::<SkuCommand>(&b);
                    let _ = codec.decode::<Watermark>(&b);
                    let _ = codec.decode::<ReservationExpired>(&b);
                    let _ = codec.decode::<TrackingStatus>(&b);
                    let _ = codec.decode::<OversellAlert>(&b);
                }
                Ok(())
            })
            .map_err(|e| e.to_string())
    });
}

#[test]
fn no_record_makes_the_fold_panic_and_every_record_is_accounted_for() {
    let records = valid_records();
    let inputs = topics::INPUTS;
    // A batch: (topic, key choice, value) per record. Key choice 0 keeps the valid record's
    // key, 1 drops it, anything else is a random key.
    let batch = proptest::collection::vec(
        (
            0..inputs.len(),
            0u8..4,
            proptest::collection::vec(any::<u8>(), 0..6),
            input(records.len()),
        ),
        1..40,
    );
    for_a_while("fold", 16, |runner| {
        runner
            .run(&batch, |batch| {
                let dir = tempfile::tempdir().unwrap();
                let mut driver =
                    Driver::open(dir.path(), Topology::uniform(2), Config::default()).unwrap();
                for (topic, key_choice, random_key, value) in &batch {
                    let bytes = bytes_of(value, &records);
                    // A mutated record goes to its own topic most of the time, so rules run.
                    let (topic, own_key) = match value {
                        Input::Mutated { record, .. } if *key_choice != 3 => {
                            (records[*record].0, records[*record].1.clone())
                        }
                        _ => (inputs[*topic], None),
                    };
                    let key = match key_choice {
                        0 => own_key.map(String::into_bytes),
                        1 => None,
                        _ => Some(random_key.clone()),
                    };
                    driver.pipe(topic, key.as_deref(), Some(bytes)).unwrap();
                }
                driver.finish(7).unwrap();
                let piped = batch.len() as u64;
                let accounting = driver.accounting();
                let consumed: u64 = inputs
                    .iter()
                    .map(|t| accounting.get(*t).map_or(0, |a| a.consumed))
                    .sum();
                prop_assert_eq!(consumed, piped);
                for (topic, a) in &accounting {
                    prop_assert!(a.closes(), "{} does not close: {:?}", topic, a);
                }
                Ok(())
            })
            .map_err(|e| e.to_string())
    });
}
