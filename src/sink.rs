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

/// Bytes of a dead letter's `detail` header at most. A detail quotes what it found (a key, a
/// field), and what it found may be a megabyte: uncut, the dead letter outgrows what the
/// broker takes and is refused on every retry.
pub const DETAIL_BYTES_MAX: usize = 1024;

/// The original key and bytes, with headers `reason`, `detail`, `topic`, `partition`, `offset`.
/// A key or value longer than `kept_bytes_max` (`limits.dead_letter_bytes_max`) is cut to it,
/// and header `key_bytes` or `value_bytes` gives its original length, so a dead letter always
/// fits the broker's record limit.
pub fn dead_letter(
    reason: DeadLetterReason,
    detail: &str,
    origin: &Origin,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    kept_bytes_max: usize,
) -> OutRecord {
    let route = if key.is_some() {
        Route::ByKey
    } else {
        Route::Partition(origin.partition)
    };
    let mut headers = vec![
        ("reason".into(), reason.label().as_bytes().to_vec()),
        (
            "detail".into(),
            cut_text(detail, DETAIL_BYTES_MAX).into_bytes(),
        ),
        ("topic".into(), origin.topic.as_bytes().to_vec()),
        (
            "partition".into(),
            origin.partition.to_string().into_bytes(),
        ),
        ("offset".into(), origin.offset.to_string().into_bytes()),
    ];
    let mut cut = |name: &str, bytes: Option<Vec<u8>>| {
        bytes.map(|mut b| {
            if b.len() > kept_bytes_max {
                headers.push((name.to_string(), b.len().to_string().into_bytes()));
                b.truncate(kept_bytes_max);
            }
            b
        })
    };
    let key = cut("key_bytes", key);
    let value = cut("value_bytes", value);
    OutRecord {
        topic: OutTopic::DeadLetters,
        route,
        key,
        value,
        headers,
        cause_time: None,
        alert: None,
    }
}

/// `text` cut to at most `max` bytes on a character boundary, saying how long it was.
fn cut_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let note = format!("... ({} bytes)", text.len());
    let mut end = max.saturating_sub(note.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{note}", &text[..end])
}

/// A header's value as text, if present.
pub fn header<'a>(record: &'a OutRecord, name: &str) -> Option<&'a str> {
    record
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}
