//! Replay verification: reads two runs' output topics and final states and reports the first
//! difference, with its key and the offsets on both sides. Outputs are compared per key in log
//! order, after dropping repeats that are byte-identical to their first copy (what an
//! `at_least_once` run may legitimately write after a crash); state is compared per SKU and
//! per order as `inspect all` prints it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use crate::codec::Codec;
use crate::config::Config;
use crate::event::{OversellAlert, ReservationExpired, TrackingStatus};
use crate::inspect::{InspectError, LocalState};
use crate::kafka::{self, TopicNames};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("codec: {0}")]
    Schema(#[from] crate::codec::SchemaError),
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error("{path}: {detail}")]
    Dump { path: String, detail: String },
}

/// One output record, where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub event_id: String,
    pub value: Vec<u8>,
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event {} at partition {} offset {}",
            self.event_id, self.partition, self.offset
        )
    }
}

/// An output topic read for comparison: per key, its records in log order.
pub type PerKey = BTreeMap<Option<Vec<u8>>, Vec<Found>>;

/// The first way two runs differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// The `index`-th record of `key` on an output topic differs (or exists on one side only).
    Output {
        topic: String,
        key: String,
        index: usize,
        expected: Option<Found>,
        actual: Option<Found>,
    },
    /// An output repeated with the same event id but different bytes: not a legitimate
    /// repeat after a crash.
    RepeatDiffers {
        topic: String,
        key: String,
        first: Found,
        repeat: Found,
    },
    /// The final state of a SKU or an order differs (or exists on one side only).
    State {
        key: String,
        expected: Option<String>,
        actual: Option<String>,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |s: &Option<Found>| s.as_ref().map_or("nothing".to_string(), Found::to_string);
        match self {
            Difference::Output {
                topic,
                key,
                index,
                expected,
                actual,
            } => match (expected, actual) {
                (Some(e), Some(a)) if e.event_id == a.event_id => write!(
                    f,
                    "{topic}, key {key}, record #{index} of the key: event {} has different \
                     contents (expected at partition {} offset {}, replay at partition {} offset {})",
                    e.event_id, e.partition, e.offset, a.partition, a.offset
                ),
                _ => write!(
                    f,
                    "{topic}, key {key}, record #{index} of the key: expected {}, replay has {}",
                    side(expected),
                    side(actual)
                ),
            },
            Difference::RepeatDiffers {
                topic,
                key,
                first,
                repeat,
            } => write!(
                f,
                "{topic}, key {key}: {repeat} repeats {first} with different bytes"
            ),
            Difference::State {
                key,
                expected,
                actual,
            } => write!(
                f,
                "state of {key}: expected {}, replay has {}",
                expected.as_deref().unwrap_or("nothing"),
                actual.as_deref().unwrap_or("nothing")
            ),
        }
    }
}

/// The output topics compared, by the name of their record type.
const OUTPUTS: [&str; 3] = ["reservation-expiry", "tracking-status", "oversell-alerts"];

fn topic_of<'a>(names: &'a TopicNames, output: &str) -> &'a str {
    match output {
        "reservation-expiry" => &names.reservation_expiry,
        "tracking-status" => &names.tracking_status,
        _ => &names.oversell_alerts,
    }
}

fn event_id(codec: &Codec, output: &str, value: &[u8]) -> Option<String> {
    match output {
        "reservation-expiry" => codec
            .decode::<ReservationExpired>(value)
            .ok()
            .map(|e| e.event_id),
        "tracking-status" => codec
            .decode::<TrackingStatus>(value)
            .ok()
            .map(|e| e.event_id),
        _ => codec
            .decode::<OversellAlert>(value)
            .ok()
            .map(|e| e.event_id),
    }
}

fn printable(key: &Option<Vec<u8>>) -> String {
    key.as_ref().map_or("(none)".to_string(), |k| {
        String::from_utf8_lossy(k).into_owned()
    })
}

/// Reads one output topic to its end, per key, without byte-identical repeats. A record that
/// does not decode keeps its bytes as its identity, so it can still be compared.
pub fn read_output(
    config: &Config,
    output: &str,
) -> Result<Result<PerKey, Difference>, VerifyError> {
    let codec = Codec::from_config(config)?;
    let names = TopicNames::from_config(config);
    let topic = topic_of(&names, output);
    let mut per_key = PerKey::new();
    let mut first: BTreeMap<String, Found> = BTreeMap::new();
    for r in kafka::read_to_end(config, topic)? {
        let value = r.value.unwrap_or_default();
        let id = event_id(&codec, output, &value)
            .unwrap_or_else(|| format!("undecodable:{}", String::from_utf8_lossy(&value)));
        let found = Found {
            event_id: id.clone(),
            value,
            partition: r.partition,
            offset: r.offset,
        };
        if let Some(earlier) = first.get(&id) {
            if earlier.value != found.value {
                return Ok(Err(Difference::RepeatDiffers {
                    topic: topic.to_string(),
                    key: printable(&r.key),
                    first: earlier.clone(),
                    repeat: found,
                }));
            }
            continue;
        }
        first.insert(id, found.clone());
        per_key.entry(r.key).or_default().push(found);
    }
    Ok(Ok(per_key))
}

/// The first difference between two runs' outputs, topic by topic, key by key.
pub fn compare_outputs(
    expected: &Config,
    actual: &Config,
) -> Result<Option<Difference>, VerifyError> {
    for output in OUTPUTS {
        let want = match read_output(expected, output)? {
            Ok(w) => w,
            Err(d) => return Ok(Some(d)),
        };
        let got = match read_output(actual, output)? {
            Ok(g) => g,
            Err(d) => return Ok(Some(d)),
        };
        let topic = topic_of(&TopicNames::from_config(actual), output).to_string();
        let keys: std::collections::BTreeSet<_> = want.keys().chain(got.keys()).collect();
        for key in keys {
            let (w, g) = (
                want.get(key).map_or(&[][..], Vec::as_slice),
                got.get(key).map_or(&[][..], Vec::as_slice),
            );
            for index in 0..w.len().max(g.len()) {
                let (a, b) = (w.get(index), g.get(index));
                let same = match (a, b) {
                    (Some(a), Some(b)) => a.value == b.value,
                    _ => false,
                };
                if !same {
                    return Ok(Some(Difference::Output {
                        topic,
                        key: printable(key),
                        index,
                        expected: a.cloned(),
                        actual: b.cloned(),
                    }));
                }
            }
        }
    }
    Ok(None)
}

/// Final state as `inspect all` prints it, by `sku <id>` and `order <id>`.
pub type StateLines = BTreeMap<String, String>;

/// The state this machine holds for `config`'s application id.
pub fn local_state(config: &Config) -> Result<StateLines, VerifyError> {
    let state = LocalState::open(config)?;
    let mut lines = StateLines::new();
    for s in state.skus()? {
        lines.insert(format!("sku {}", s.sku), json(&s));
    }
    for o in state.orders()? {
        lines.insert(format!("order {}", o.order_id), json(&o));
    }
    Ok(lines)
}

/// State from a file of `inspect all` lines (one or several instances' output concatenated).
pub fn state_dump(path: &Path) -> Result<StateLines, VerifyError> {
    let dump_error = |detail: String| VerifyError::Dump {
        path: path.display().to_string(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| dump_error(e.to_string()))?;
    let mut lines = StateLines::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| dump_error(format!("line {}: {e}", n + 1)))?;
        let key = if let Some(sku) = value.get("sku").and_then(|v| v.as_str()) {
            format!("sku {sku}")
        } else if let Some(id) = value.get("order_id").and_then(|v| v.as_str()) {
            format!("order {id}")
        } else {
            return Err(dump_error(format!(
                "line {}: neither a SKU nor an order",
                n + 1
            )));
        };
        // Re-serialised, so formatting differences don't count.
        lines.insert(key, value.to_string());
    }
    Ok(lines)
}

/// The first SKU or order whose state differs.
pub fn compare_state(expected: &StateLines, actual: &StateLines) -> Option<Difference> {
    let keys: std::collections::BTreeSet<_> = expected.keys().chain(actual.keys()).collect();
    keys.into_iter().find_map(|key| {
        let (a, b) = (expected.get(key), actual.get(key));
        (a != b).then(|| Difference::State {
            key: key.clone(),
            expected: a.cloned(),
            actual: b.cloned(),
        })
    })
}

/// A value as one JSON line with its object keys sorted, the form `state_dump` reads back, so
/// formatting never counts as a difference.
fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .map(|v| v.to_string())
        .unwrap_or_default()
}
