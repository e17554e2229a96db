//! What a task hands to whoever delivers its outputs (the Kafka producer or the broker-free
//! driver): records for the output topics, the repartition topic and the dead-letter topic.
//! It owns the dead-letter format; it never sends anything itself.

use crate::event::{AlertKind, Millis};

/// The logical topics a task writes to; the runtime maps them to configured names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutTopic {
    ReservationExpiry,
    TrackingStatus,
    OversellAlerts,
    /// `<app>.sku-commands`: SKU commands (by key) and watermarks (to every partition).
    SkuCommands,
    /// `<app>.dlq`.
    DeadLetters,
}

/// Where in its topic a record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Kafka's murmur2 partitioner over the key, as every keyed output.
    ByKey,
    /// One copy to each partition (watermarks).
    EveryPartition,
    /// The partition the source record came from (dead letters without a key).
    Partition(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub topic: OutTopic,
    pub route: Route,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Event time of what caused the record, for end-to-end latency.
    pub cause_time: Option<Millis>,
    /// The alert's kind, on an oversell alert: its delivery counts and logs by kind.
    pub alert: Option<AlertKind>,
}

impl OutRecord {
    /// A record for `topic`, partitioned by `key`.
    pub fn keyed(topic: OutTopic, key: &str, value: Vec<u8>, cause_time: Millis) -> OutRecord {
        OutRecord {
            topic,
            route: Route::ByKey,
            key: Some(key.as_bytes().to_vec()),
            value: Some(value),
            headers: Vec::new(),
            cause_time: Some(cause_time),
            alert: None,
        }
    }
}

/// Why a record went to the dead-letter topic. The labels are the `reason` header and metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeadLetterReason {
    Decode,
    Schema,
    Validation,
    Orphan,
}

impl DeadLetterReason {
    pub const ALL: [DeadLetterReason; 4] = [
        DeadLetterReason::Decode,
        DeadLetterReason::Schema,
        DeadLetterReason::Validation,
        DeadLetterReason::Orphan,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DeadLetterReason::Decode => "decode",
            DeadLetterReason::Schema => "schema",
            DeadLetterReason::Validation => "validation",
            DeadLetterReason::Orphan => "orphan",
        }
    }

    pub fn from_label(label: &str) -> Option<DeadLetterReason> {
        Self::ALL.into_iter().find(|r| r.label() == label)
    }
}

/// Where a record came from, for its dead letter's headers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
}

/// The original key and bytes, with headers `reason`, `detail`, `topic`, `partition`, `offset`.
pub fn dead_letter(
    reason: DeadLetterReason,
    detail: &str,
    origin: &Origin,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
) -> OutRecord {
    let route = if key.is_some() {
        Route::ByKey
    } else {
        Route::Partition(origin.partition)
    };
    OutRecord {
        topic: OutTopic::DeadLetters,
        route,
        key,
        value,
        headers: vec![
            ("reason".into(), reason.label().as_bytes().to_vec()),
            ("detail".into(), detail.as_bytes().to_vec()),
            ("topic".into(), origin.topic.as_bytes().to_vec()),
            (
                "partition".into(),
                origin.partition.to_string().into_bytes(),
            ),
            ("offset".into(), origin.offset.to_string().into_bytes()),
        ],
        cause_time: None,
        alert: None,
    }
}

/// A header's value as text, if present.
pub fn header<'a>(record: &'a OutRecord, name: &str) -> Option<&'a str> {
    record
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}
