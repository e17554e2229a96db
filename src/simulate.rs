//! `orderfold simulate`: runs the broker-free driver over a JSON-lines log and writes the
//! outputs and final state as JSON lines, so an operator can try a day's log or a rule change
//! offline. It owns the JSON file formats; the rules are the driver's.

use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::codec::Codec;
use crate::config::Config;
use crate::driver::{topics, Driver, DriverError, Record, Topology};
use crate::event::{InventoryEvent, LogisticsEvent, OrderEvent, PaymentEvent};
use crate::sink::DeadLetterReason;

/// One input line: `{"topic": "orders", "key": "o-1", "value": {...}}`, with an optional
/// `"timestamp"` (epoch ms): the Kafka record timestamp, checked against `occurred_at` as
/// `limits.future_skew_ms` says. A line without one is not checked.
#[derive(Debug, Deserialize)]
struct Line {
    topic: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    value: Value,
    #[serde(default)]
    timestamp: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct SimulateOptions {
    pub input: PathBuf,
    pub out: PathBuf,
    pub partitions: u32,
    pub batch_records: usize,
    pub config: Config,
}

/// What a simulation saw, for the summary it prints.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub lines: usize,
    pub expiries: usize,
    pub tracking_updates: usize,
    pub alerts: usize,
    pub dead_letters: usize,
    pub skus: usize,
    pub orders: usize,
    pub parked: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Driver(#[from] DriverError),
}

/// Turns a JSON value into the Avro bytes a producer would have sent, or says why it can't.
fn encode_json(codec: &Codec, topic: &str, value: Value) -> Result<Vec<u8>, String> {
    fn enc<T: crate::codec::AvroRecord + serde::de::DeserializeOwned>(
        codec: &Codec,
        value: Value,
    ) -> Result<Vec<u8>, String> {
        let event: T =
            serde_json::from_value(value).map_err(|e| format!("{}: {e}", T::KIND.full_name()))?;
        codec
            .encode(&event)
            .map_err(|e| format!("cannot encode: {e}"))
    }
    match topic {
        topics::ORDERS => enc::<OrderEvent>(codec, value),
        topics::PAYMENTS => enc::<PaymentEvent>(codec, value),
        topics::LOGISTICS => enc::<LogisticsEvent>(codec, value),
        _ => enc::<InventoryEvent>(codec, value),
    }
}

struct Files {
    dir: PathBuf,
}

impl Files {
    fn write(
        &self,
        name: &str,
        lines: impl IntoIterator<Item = Value>,
    ) -> Result<usize, SimulateError> {
        let path = self.dir.join(name);
        let err = |source| SimulateError::Write {
            path: path.clone(),
            source,
        };
        let mut w = BufWriter::new(std::fs::File::create(&path).map_err(err)?);
        let mut n = 0;
        for line in lines {
            writeln!(w, "{line}").map_err(err)?;
            n += 1;
        }
        w.flush().map_err(err)?;
        Ok(n)
    }
}

fn header(r: &Record, name: &str) -> Value {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map_or(Value::Null, |(_, v)| {
            Value::String(String::from_utf8_lossy(v).into_owned())
        })
}

fn key_json(key: &Option<Vec<u8>>) -> Value {
    key.as_ref().map_or(Value::Null, |k| {
        Value::String(String::from_utf8_lossy(k).into_owned())
    })
}

/// Runs the simulation and writes `reservation-expiry.jsonl`, `tracking-status.jsonl`,
/// `oversell-alerts.jsonl`, `dlq.jsonl`, `state-skus.jsonl` and `state-orders.jsonl` to `out`.
pub fn simulate(opts: &SimulateOptions, state_dir: &Path) -> Result<Summary, SimulateError> {
    let file = std::fs::File::open(&opts.input).map_err(|source| SimulateError::Read {
        path: opts.input.clone(),
        source,
    })?;
    let mut driver = Driver::open(
        state_dir,
        Topology::uniform(opts.partitions),
        opts.config.clone(),
    )?;
    let codec = driver.codec().clone();
    let mut summary = Summary::default();
    // Lines that never reach a topic (not JSON, unknown topic) are dead-lettered here.
    let mut unrouted: Vec<Value> = Vec::new();
    // Why a line's value did not fit its schema, by (topic, index among the topic's lines).
    let mut json_errors: HashMap<(String, i64), String> = HashMap::new();
    let mut per_topic: HashMap<String, i64> = HashMap::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| SimulateError::Read {
            path: opts.input.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        summary.lines += 1;
        let parsed = serde_json::from_str::<Line>(&line)
            .map_err(|e| e.to_string())
            .and_then(|l| {
                if topics::INPUTS.contains(&l.topic.as_str()) {
                    Ok(l)
                } else {
                    Err(format!("unknown topic {:?}", l.topic))
                }
            });
        let l = match parsed {
            Ok(l) => l,
            Err(detail) => {
                unrouted.push(json!({
                    "reason": DeadLetterReason::Decode.label(), "detail": detail,
                    "topic": null, "partition": null, "offset": index, "key": null, "value": line,
                }));
                continue;
            }
        };
        let n = per_topic.entry(l.topic.clone()).or_default();
        let topic_index = *n;
        *n += 1;
        let bytes = match encode_json(&codec, &l.topic, l.value.clone()) {
            Ok(b) => b,
            Err(detail) => {
                // Piped as the raw JSON text: the task dead-letters it as undecodable, in its
                // place in the log, exactly as it would a bad record on Kafka.
                json_errors.insert((l.topic.clone(), topic_index), detail);
                l.value.to_string().into_bytes()
            }
        };
        driver.pipe_at(
            &l.topic,
            l.key.as_deref().map(str::as_bytes),
            Some(bytes),
            l.timestamp,
        )?;
    }
    driver.finish(opts.batch_records)?;

    std::fs::create_dir_all(&opts.out).map_err(|source| SimulateError::Write {
        path: opts.out.clone(),
        source,
    })?;
    let files = Files {
        dir: opts.out.clone(),
    };
    let keyed = |records: Vec<&Record>, decode: &dyn Fn(&[u8]) -> Option<Value>| -> Vec<Value> {
        records
            .into_iter()
            .map(|r| json!({"key": key_json(&r.key), "value": r.value.as_deref().and_then(decode)}))
            .collect()
    };
    summary.expiries = files.write(
        "reservation-expiry.jsonl",
        keyed(driver.records(topics::RESERVATION_EXPIRY), &|b| {
            as_json::<crate::event::ReservationExpired>(&codec, b)
        }),
    )?;
    summary.tracking_updates = files.write(
        "tracking-status.jsonl",
        keyed(driver.records(topics::TRACKING_STATUS), &|b| {
            as_json::<crate::event::TrackingStatus>(&codec, b)
        }),
    )?;
    summary.alerts = files.write(
        "oversell-alerts.jsonl",
        keyed(driver.records(topics::OVERSELL_ALERTS), &|b| {
            as_json::<crate::event::OversellAlert>(&codec, b)
        }),
    )?;
    let mut dlq = unrouted;
    for r in driver.dead_letters() {
        let topic = header(r, "topic");
        let offset = header(r, "offset");
        let detail = match (
            topic.as_str(),
            offset.as_str().and_then(|o| o.parse::<i64>().ok()),
        ) {
            (Some(t), Some(o)) => json_errors.get(&(t.to_string(), o)).cloned(),
            _ => None,
        };
        let value = r
            .value
            .as_deref()
            .map_or(Value::Null, |v| readable_value(&codec, topic.as_str(), v));
        dlq.push(json!({
            "reason": header(r, "reason"),
            "detail": detail.map_or_else(|| header(r, "detail"), Value::String),
            "topic": topic,
            "partition": header(r, "partition").as_str().and_then(|p| p.parse::<u32>().ok()),
            "offset": offset.as_str().and_then(|o| o.parse::<i64>().ok()),
            "key": key_json(&r.key),
            "value": value,
        }));
    }
    summary.dead_letters = files.write("dlq.jsonl", dlq)?;
    let skus = driver.skus()?;
    summary.skus = files.write(
        "state-skus.jsonl",
        skus.iter().filter_map(|s| serde_json::to_value(s).ok()),
    )?;
    let orders = driver.orders()?;
    summary.orders = files.write(
        "state-orders.jsonl",
        orders.iter().filter_map(|o| serde_json::to_value(o).ok()),
    )?;
    summary.parked = driver.parked()?.iter().map(|(_, n)| n).sum();
    Ok(summary)
}

/// An Avro record as JSON, if it decodes as `T`.
fn as_json<T: crate::codec::AvroRecord>(codec: &Codec, bytes: &[u8]) -> Option<Value> {
    codec
        .decode::<T>(bytes)
        .ok()
        .and_then(|e| serde_json::to_value(e).ok())
}

/// A dead letter's value as JSON: the decoded event when it decodes (a rule violation or an
/// orphan), else the original bytes as text.
fn readable_value(codec: &Codec, topic: Option<&str>, bytes: &[u8]) -> Value {
    let decoded = match topic {
        Some(topics::ORDERS) => as_json::<OrderEvent>(codec, bytes),
        Some(topics::PAYMENTS) => as_json::<PaymentEvent>(codec, bytes),
        Some(topics::LOGISTICS) => as_json::<LogisticsEvent>(codec, bytes),
        Some(topics::INVENTORY) => as_json::<InventoryEvent>(codec, bytes),
        _ => None,
    };
    decoded.unwrap_or_else(|| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}
