//! Avro single-object encoding (`C3 01`, the 8-byte little-endian CRC-64-AVRO fingerprint of
//! the writer schema, then the binary datum) and Confluent's framing (`00`, the writer schema's
//! 4-byte big-endian registry id, then the datum) for every record type in `schemas/`, detected
//! per record by the first byte. It owns schema lookup by fingerprint and by id, and must never
//! panic on input: a bad record is an error value.
//!
//! Decoding does no I/O. An id the codec does not know yet is fetched from the schema registry
//! by `resolve`, which the runtime calls as a record arrives and before a task decodes it; a
//! task then finds the id cached, or reads the record as an unknown schema.
//!
//! Schemas are parsed and resolved once, when the codec is built. A record written with our own
//! schema takes the fast path (serde straight from the bytes); a record written with another
//! known writer schema of the same record is read through Avro schema resolution.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use apache_avro::rabin::Rabin;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::WireFormat;
use crate::event::{
    InventoryEvent, LogisticsEvent, OrderEvent, OversellAlert, PaymentEvent, ReservationExpired,
    SkuCommand, TrackingStatus, Watermark,
};
use crate::registry::{Registry, RegistryError};

/// The two bytes that open every single-object encoded record.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
const HEADER_LEN: usize = 10;
/// The byte that opens every Confluent-framed record, followed by the 4-byte schema id.
pub const CONFLUENT_MAGIC: u8 = 0;
const CONFLUENT_HEADER_LEN: usize = 5;
/// Schema ids the registry said it does not have, remembered so that a run of such records
/// does not ask again for each; forgotten all at once past this many.
const UNKNOWN_IDS_MAX: usize = 10_000;

/// A record type with a schema in `schemas/`.
pub trait AvroRecord: Serialize + DeserializeOwned {
    const KIND: RecordKind;
}

/// Every schema orderfold knows, one per `.avsc` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    OrderEvent,
    PaymentEvent,
    LogisticsEvent,
    InventoryEvent,
    ReservationExpired,
    TrackingStatus,
    OversellAlert,
    SkuCommand,
    Watermark,
}

impl RecordKind {
    pub const ALL: [RecordKind; 9] = [
        RecordKind::OrderEvent,
        RecordKind::PaymentEvent,
        RecordKind::LogisticsEvent,
        RecordKind::InventoryEvent,
        RecordKind::ReservationExpired,
        RecordKind::TrackingStatus,
        RecordKind::OversellAlert,
        RecordKind::SkuCommand,
        RecordKind::Watermark,
    ];

    /// The schema text, compiled in from `schemas/` so the binary and the docs cannot drift.
    pub fn schema_text(self) -> &'static str {
        match self {
            RecordKind::OrderEvent => include_str!("../schemas/OrderEvent.avsc"),
            RecordKind::PaymentEvent => include_str!("../schemas/PaymentEvent.avsc"),
            RecordKind::LogisticsEvent => include_str!("../schemas/LogisticsEvent.avsc"),
            RecordKind::InventoryEvent => include_str!("../schemas/InventoryEvent.avsc"),
            RecordKind::ReservationExpired => include_str!("../schemas/ReservationExpired.avsc"),
            RecordKind::TrackingStatus => include_str!("../schemas/TrackingStatus.avsc"),
            RecordKind::OversellAlert => include_str!("../schemas/OversellAlert.avsc"),
            RecordKind::SkuCommand => include_str!("../schemas/SkuCommand.avsc"),
            RecordKind::Watermark => include_str!("../schemas/Watermark.avsc"),
        }
    }

    /// The record's full name, which a writer schema must share to be read as this kind.
    pub fn full_name(self) -> &'static str {
        match self {
            RecordKind::OrderEvent => "orderfold.OrderEvent",
            RecordKind::PaymentEvent => "orderfold.PaymentEvent",
            RecordKind::LogisticsEvent => "orderfold.LogisticsEvent",
            RecordKind::InventoryEvent => "orderfold.InventoryEvent",
            RecordKind::ReservationExpired => "orderfold.ReservationExpired",
            RecordKind::TrackingStatus => "orderfold.TrackingStatus",
            RecordKind::OversellAlert => "orderfold.OversellAlert",
            RecordKind::SkuCommand => "orderfold.SkuCommand",
            RecordKind::Watermark => "orderfold.Watermark",
        }
    }
}

/// Earlier versions of orderfold's own internal schemas, still read: a record written by the
/// version before an upgrade may be in flight when the new one starts.
const PREVIOUS_SCHEMAS: [&str; 1] = [include_str!("../schemas/previous/SkuCommand.1.avsc")];

macro_rules! avro_record {
    ($($ty:ident),+) => { $(impl AvroRecord for $ty { const KIND: RecordKind = RecordKind::$ty; })+ };
}
avro_record!(
    OrderEvent,
    PaymentEvent,
    LogisticsEvent,
    InventoryEvent,
    ReservationExpired,
    TrackingStatus,
    OversellAlert,
    SkuCommand,
    Watermark
);

/// Why a record could not be read. The names match the dead-letter reasons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a record of a schema we can read (truncated, wrong magic, bad union
    /// branch or enum symbol, trailing bytes...). Dead-letter with reason `decode`.
    #[error("{0}")]
    Decode(String),
    /// The writer schema's fingerprint is not one we know for this topic. Dead-letter with
    /// reason `schema`.
    #[error("{0}")]
    UnknownSchema(String),
}

/// A problem with the codec's own schemas; only configuration can cause it.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("schema {name}: {source}")]
    Parse {
        name: String,
        #[source]
        source: Box<apache_avro::Error>,
    },
    #[error("schema {schema}: cannot write its canonical form: {error}")]
    Canonical { schema: String, error: String },
    #[error("writer schema {0} is not a version of any record orderfold reads")]
    UnknownRecord(String),
    #[error("avro.schema_ids {id}: cannot read {path}: {error}")]
    SchemaFile {
        id: String,
        path: std::path::PathBuf,
        error: String,
    },
    #[error("avro.writer_schemas: cannot read {path}: {error}")]
    WriterFile {
        path: std::path::PathBuf,
        error: String,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(
        "avro.output_format = \"confluent\" needs a schema id for {0}: list its .avsc in \
         avro.schema_ids or set avro.schema_registry_url"
    )]
    NoOutputId(&'static str),
}

/// The 8-byte little-endian CRC-64-AVRO fingerprint of a schema's Parsing Canonical Form, as
/// the Avro specification defines it: what single-object records carry.
pub fn fingerprint(schema: &Schema) -> Result<[u8; 8], SchemaError> {
    let form = crate::canonical::canonical_form(schema).map_err(|e| SchemaError::Canonical {
        schema: schema_name(schema),
        error: e.to_string(),
    })?;
    Ok(crate::canonical::fingerprint(&form))
}

/// The fingerprint orderfold 0.1 wrote: of apache-avro's canonical form, which keeps
/// logical types. Accepted on input for one release, so records already written still read.
fn legacy_fingerprint(schema: &Schema) -> [u8; 8] {
    let fp = schema.fingerprint::<Rabin>();
    let mut out = [0u8; 8];
    out.copy_from_slice(&fp.bytes[..8]);
    out
}

fn schema_name(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => r.name.fullname(None),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)),
    }
}

/// A writer schema other than ours, read by resolving it against our reader schema. One Avro's
/// resolution rules cannot read (a field changed type, a field without default removed, an
/// enum symbol dropped) keeps why instead: its records are dead-lettered as `schema`.
struct Evolved {
    reader: Result<GenericDatumReader<'static>, String>,
}

/// The writer schema behind a Confluent schema id.
struct IdSchema {
    kind: RecordKind,
    /// None when it is our own schema: the fast path reads it.
    evolved: Option<Evolved>,
}

struct Entry {
    fingerprint: [u8; 8],
    reader: GenericDatumReader<'static>,
    writer: GenericDatumWriter<'static>,
    evolved: HashMap<[u8; 8], Evolved>,
}

/// Reads and writes every record type. Cheap to share (`Arc`), built once per process.
pub struct Codec {
    entries: HashMap<RecordKind, Entry>,
    kind_by_fingerprint: HashMap<[u8; 8], RecordKind>,
    /// A schema's fingerprint as orderfold 0.1 computed it, to the specification's: records
    /// written before the upgrade still read (docs/OPERATIONS.md, "Upgrading").
    legacy_fingerprints: HashMap<[u8; 8], [u8; 8]>,
    /// Confluent schema ids known so far: configured, registered, or fetched by `resolve`.
    by_id: RwLock<HashMap<u32, Arc<IdSchema>>>,
    unknown_ids: Mutex<HashSet<u32>>,
    registry: Option<Registry>,
    /// Kinds written in Confluent framing, with their schema id (`avro.output_format`).
    output_ids: HashMap<RecordKind, u32>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("schemas", &self.kind_by_fingerprint.len())
            .finish()
    }
}

/// Schemas live as long as the codec's readers, which borrow them; a process builds one codec,
/// so leaking the few kilobytes they take is the simple way to give them that lifetime.
fn leak_schema(text: &str, name: &str) -> Result<&'static Schema, SchemaError> {
    let schema = Schema::parse_str(text).map_err(|e| SchemaError::Parse {
        name: name.to_string(),
        source: Box::new(e),
    })?;
    Ok(Box::leak(Box::new(schema)))
}

fn schema_error(name: &str, e: apache_avro::Error) -> SchemaError {
    SchemaError::Parse {
        name: name.to_string(),
        source: Box::new(e),
    }
}

impl Codec {
    /// The codec for orderfold's own schemas.
    pub fn new() -> Result<Arc<Codec>, SchemaError> {
        Self::with_writer_schemas(&[])
    }

    /// The codec for orderfold's schemas plus other writer schemas (older or newer versions
    /// of the same records) that producers may use; each is matched to our record by full name.
    pub fn with_writer_schemas(writer_schemas: &[String]) -> Result<Arc<Codec>, SchemaError> {
        Self::build(writer_schemas).map(Arc::new)
    }

    /// The codec a config asks for: static schema ids, the schema registry, and the framing of
    /// the output topics. With `confluent` output it learns each output schema's id from
    /// `avro.schema_ids` or by registering it under `<topic>-value`.
    pub fn from_config(config: &crate::config::Config) -> Result<Arc<Codec>, SchemaError> {
        let avro = &config.avro;
        let mut codec = Self::build(&Self::writer_schema_texts(avro)?)?;
        for (id, path) in &avro.schema_ids {
            let file_error = |error: String| SchemaError::SchemaFile {
                id: id.clone(),
                path: path.clone(),
                error,
            };
            let number = id.parse::<u32>().map_err(|e| file_error(e.to_string()))?;
            let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
            let (_, schema) = id_schema(&codec, &text)?;
            codec.by_id_mut().insert(number, Arc::new(schema));
        }
        if !avro.schema_registry_url.is_empty() {
            codec.registry = Some(Registry::new(
                &avro.schema_registry_url,
                Duration::from_millis(avro.registry_timeout_ms),
            ));
        }
        if avro.output_format == WireFormat::Confluent {
            let t = &config.topics;
            for (kind, topic) in [
                (RecordKind::ReservationExpired, &t.reservation_expiry),
                (RecordKind::TrackingStatus, &t.tracking_status),
                (RecordKind::OversellAlert, &t.oversell_alerts),
            ] {
                let pinned = codec
                    .by_id_mut()
                    .iter()
                    .find(|(_, s)| s.kind == kind && s.evolved.is_none())
                    .map(|(id, _)| *id);
                let id = match (pinned, &codec.registry) {
                    (Some(id), _) => id,
                    (None, Some(registry)) => {
                        let id =
                            registry.register(&format!("{topic}-value"), kind.schema_text())?;
                        codec.by_id_mut().insert(
                            id,
                            Arc::new(IdSchema {
                                kind,
                                evolved: None,
                            }),
                        );
                        id
                    }
                    (None, None) => return Err(SchemaError::NoOutputId(kind.full_name())),
                };
                codec.output_ids.insert(kind, id);
            }
        }
        Ok(Arc::new(codec))
    }

    /// The texts of `avro.writer_schemas`.
    pub fn writer_schema_texts(
        avro: &crate::config::AvroConfig,
    ) -> Result<Vec<String>, SchemaError> {
        avro.writer_schemas
            .iter()
            .map(|path| {
                std::fs::read_to_string(path).map_err(|e| SchemaError::WriterFile {
                    path: path.clone(),
                    error: e.to_string(),
                })
            })
            .collect()
    }

    fn by_id_mut(&mut self) -> &mut HashMap<u32, Arc<IdSchema>> {
        self.by_id.get_mut().unwrap_or_else(|e| e.into_inner())
    }

    fn build(writer_schemas: &[String]) -> Result<Codec, SchemaError> {
        let mut entries = HashMap::new();
        let mut kind_by_fingerprint = HashMap::new();
        let mut legacy_fingerprints = HashMap::new();
        for kind in RecordKind::ALL {
            let name = kind.full_name();
            let schema = leak_schema(kind.schema_text(), name)?;
            let fingerprint = fingerprint(schema)?;
            legacy_fingerprints.insert(legacy_fingerprint(schema), fingerprint);
            let reader = GenericDatumReader::builder(schema)
                .human_readable(false)
                .build()
                .map_err(|e| schema_error(name, e))?;
            let writer = GenericDatumWriter::builder(schema)
                .human_readable(false)
                .build()
                .map_err(|e| schema_error(name, e))?;
            kind_by_fingerprint.insert(fingerprint, kind);
            entries.insert(
                kind,
                Entry {
                    fingerprint,
                    reader,
                    writer,
                    evolved: HashMap::new(),
                },
            );
        }
        let mut codec = Codec {
            entries,
            kind_by_fingerprint,
            legacy_fingerprints,
            by_id: RwLock::new(HashMap::new()),
            unknown_ids: Mutex::new(HashSet::new()),
            registry: None,
            output_ids: HashMap::new(),
        };
        let previous = PREVIOUS_SCHEMAS.iter().copied();
        for text in previous.chain(writer_schemas.iter().map(String::as_str)) {
            let (fp, schema) = id_schema(&codec, text)?;
            let legacy = legacy_fingerprint(
                &Schema::parse_str(text).map_err(|e| schema_error("writer schema", e))?,
            );
            codec.legacy_fingerprints.insert(legacy, fp);
            codec.kind_by_fingerprint.insert(fp, schema.kind);
            if let (Some(evolved), Some(entry)) =
                (schema.evolved, codec.entries.get_mut(&schema.kind))
            {
                entry.evolved.insert(fp, evolved);
            }
        }
        Ok(codec)
    }

    /// Makes sure the schema id of a Confluent-framed record is known, asking the registry
    /// once for an id it has not seen. Anything else returns at once. An error means the
    /// registry is unreachable: the record cannot be read now, and must not be dead-lettered
    /// for it.
    pub fn resolve(&self, bytes: &[u8]) -> Result<(), RegistryError> {
        let (Some(registry), Some(id)) = (&self.registry, confluent_id(bytes)) else {
            return Ok(());
        };
        if self.known_id(id).is_some() || self.lock_unknown().contains(&id) {
            return Ok(());
        }
        let found = match registry.schema(id) {
            Ok(text) => id_schema(self, &text)
                .map(|(_, schema)| schema)
                .map_err(|e| e.to_string()),
            Err(RegistryError::NotFound { .. }) => Err("not in the registry".to_string()),
            Err(e) => return Err(e),
        };
        match found {
            Ok(schema) => {
                self.by_id
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, Arc::new(schema));
            }
            Err(why) => {
                tracing::warn!(schema_id = id, why, "unknown schema id");
                let mut unknown = self.lock_unknown();
                if unknown.len() >= UNKNOWN_IDS_MAX {
                    unknown.clear();
                }
                unknown.insert(id);
            }
        }
        Ok(())
    }

    fn lock_unknown(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        self.unknown_ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn known_id(&self, id: u32) -> Option<Arc<IdSchema>> {
        self.by_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// The schema behind a Confluent-framed record's id, and its body.
    fn by_confluent_id<'b>(
        &self,
        bytes: &'b [u8],
    ) -> Result<(Arc<IdSchema>, &'b [u8]), DecodeError> {
        let Some(id) = confluent_id(bytes) else {
            return Err(DecodeError::Decode(format!(
                "{} bytes is shorter than the Confluent header",
                bytes.len()
            )));
        };
        let schema = self
            .known_id(id)
            .ok_or_else(|| DecodeError::UnknownSchema(format!("unknown schema id {id}")))?;
        Ok((schema, &bytes[CONFLUENT_HEADER_LEN..]))
    }

    fn entry(&self, kind: RecordKind) -> &Entry {
        // Every kind is inserted by the constructor; a miss is a programmer error.
        &self.entries[&kind]
    }

    /// Which record a value holds, by its writer fingerprint or schema id.
    pub fn kind_of(&self, bytes: &[u8]) -> Result<RecordKind, DecodeError> {
        if bytes.first() == Some(&CONFLUENT_MAGIC) {
            return Ok(self.by_confluent_id(bytes)?.0.kind);
        }
        let fp = self.current(split_header(bytes)?.0);
        self.kind_by_fingerprint
            .get(&fp)
            .copied()
            .ok_or_else(|| unknown_fingerprint(fp))
    }

    /// A fingerprint as the specification computes it, for one orderfold 0.1 wrote.
    fn current(&self, fp: [u8; 8]) -> [u8; 8] {
        self.legacy_fingerprints.get(&fp).copied().unwrap_or(fp)
    }

    /// Reads one record of type `T`, single-object encoded or Confluent-framed.
    pub fn decode<T: AvroRecord>(&self, bytes: &[u8]) -> Result<T, DecodeError> {
        if bytes.first() == Some(&CONFLUENT_MAGIC) {
            let (schema, body) = self.by_confluent_id(bytes)?;
            if schema.kind != T::KIND {
                return Err(DecodeError::UnknownSchema(format!(
                    "schema id {} is a {}, not a {}",
                    confluent_id(bytes).unwrap_or_default(),
                    schema.kind.full_name(),
                    T::KIND.full_name()
                )));
            }
            return self.read(schema.evolved.as_ref(), body);
        }
        let (fp, body) = split_header(bytes)?;
        let entry = self.entry(T::KIND);
        // Our own fingerprint, the common case, skips the lookup of an old one.
        let fp = if fp == entry.fingerprint {
            fp
        } else {
            self.current(fp)
        };
        if fp == entry.fingerprint {
            self.read(None, body)
        } else if let Some(evolved) = entry.evolved.get(&fp) {
            self.read(Some(evolved), body)
        } else if self.kind_by_fingerprint.contains_key(&fp) {
            Err(DecodeError::UnknownSchema(format!(
                "writer schema {} is not a {}",
                hex(&fp),
                T::KIND.full_name()
            )))
        } else {
            Err(unknown_fingerprint(fp))
        }
    }

    /// Reads a datum of `T` written with our schema (`evolved` None) or an evolved one.
    fn read<T: AvroRecord>(
        &self,
        evolved: Option<&Evolved>,
        mut body: &[u8],
    ) -> Result<T, DecodeError> {
        let error =
            |e: apache_avro::Error| DecodeError::Decode(format!("{}: {e}", T::KIND.full_name()));
        let value = match evolved {
            None => self
                .entry(T::KIND)
                .reader
                .read_deser::<T>(&mut body)
                .map_err(error)?,
            Some(evolved) => {
                let reader = evolved.reader.as_ref().map_err(|why| {
                    DecodeError::UnknownSchema(format!(
                        "writer schema cannot be read as {}: {why}",
                        T::KIND.full_name()
                    ))
                })?;
                let value = reader.read_value(&mut body).map_err(error)?;
                apache_avro::from_value::<T>(&value).map_err(error)?
            }
        };
        if !body.is_empty() {
            return Err(DecodeError::Decode(format!(
                "{}: {} trailing bytes after the record",
                T::KIND.full_name(),
                body.len()
            )));
        }
        Ok(value)
    }

    /// Writes one record with our schema: Confluent-framed when the config gives its kind an
    /// output id, else single-object encoded.
    pub fn encode<T: AvroRecord>(&self, value: &T) -> Result<Vec<u8>, apache_avro::Error> {
        let entry = self.entry(T::KIND);
        let mut out = Vec::with_capacity(64);
        match self.output_ids.get(&T::KIND) {
            Some(id) => {
                out.push(CONFLUENT_MAGIC);
                out.extend_from_slice(&id.to_be_bytes());
            }
            None => {
                out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
                out.extend_from_slice(&entry.fingerprint);
            }
        }
        entry.writer.write_ser(&mut out, value)?;
        Ok(out)
    }
}

/// The schema id of a Confluent-framed record, if `bytes` is one.
pub fn confluent_id(bytes: &[u8]) -> Option<u32> {
    match bytes {
        [CONFLUENT_MAGIC, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// The Confluent framing of a datum written with the schema registered as `id`: what a
/// Confluent serializer writes. `single_object` is a single-object encoded record.
pub fn reframe_confluent(single_object: &[u8], id: u32) -> Option<Vec<u8>> {
    let body = single_object.get(HEADER_LEN..)?;
    let mut out = Vec::with_capacity(CONFLUENT_HEADER_LEN + body.len());
    out.push(CONFLUENT_MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    Some(out)
}

/// A writer schema's fingerprint and how to read it: matched to our record by its full name,
/// read through resolution unless it is our own schema.
fn id_schema(codec: &Codec, text: &str) -> Result<([u8; 8], IdSchema), SchemaError> {
    let writer = leak_schema(text, "writer schema")?;
    let full_name = match writer {
        Schema::Record(r) => r.name.fullname(None),
        _ => return Err(SchemaError::UnknownRecord(writer.canonical_form())),
    };
    let kind = RecordKind::ALL
        .into_iter()
        .find(|k| k.full_name() == full_name)
        .ok_or_else(|| SchemaError::UnknownRecord(full_name.clone()))?;
    let fp = fingerprint(writer)?;
    if fp == codec.entry(kind).fingerprint {
        return Ok((
            fp,
            IdSchema {
                kind,
                evolved: None,
            },
        ));
    }
    let reader_schema = leak_schema(kind.schema_text(), kind.full_name())?;
    let reader = match SchemaCompatibility::can_read(writer, reader_schema) {
        Ok(_) => Ok(GenericDatumReader::builder(writer)
            .reader_schema(reader_schema)
            .human_readable(false)
            .build()
            .map_err(|e| schema_error(&full_name, e))?),
        Err(why) => {
            tracing::warn!(
                schema = %full_name,
                fingerprint = %hex(&fp),
                error = %why,
                "a writer schema orderfold cannot read: its records will be dead-lettered as `schema`"
            );
            Err(why.to_string())
        }
    };
    Ok((
        fp,
        IdSchema {
            kind,
            evolved: Some(Evolved { reader }),
        },
    ))
}

fn split_header(bytes: &[u8]) -> Result<([u8; 8], &[u8]), DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Decode(format!(
            "{} bytes is shorter than the single-object header",
            bytes.len()
        )));
    }
    if bytes[..2] != SINGLE_OBJECT_MAGIC {
        return Err(DecodeError::Decode(format!(
            "not single-object encoded (starts with {:02x} {:02x})",
            bytes[0], bytes[1]
        )));
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[2..HEADER_LEN]);
    Ok((fp, &bytes[HEADER_LEN..]))
}

fn unknown_fingerprint(fp: [u8; 8]) -> DecodeError {
    DecodeError::UnknownSchema(format!("unknown writer schema fingerprint {}", hex(&fp)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;

    fn codec() -> Arc<Codec> {
        Codec::new().unwrap()
    }

    fn placed() -> OrderEvent {
        crate::event::fixtures::placed(1, 1_700_000_000_000)
    }

    #[test]
    fn fingerprint_matches_the_avro_spec_for_null() {
        // The Avro specification's CRC-64-AVRO of the canonical form "null".
        let schema = Schema::parse_str("\"null\"").unwrap();
        assert_eq!(
            u64::from_le_bytes(fingerprint(&schema).unwrap()),
            0x63dd_24e7_cc25_8f8a
        );
    }

    #[test]
    fn every_record_round_trips() {
        let c = codec();
        let e = placed();
        assert_eq!(c.decode::<OrderEvent>(&c.encode(&e).unwrap()).unwrap(), e);
        let p = PaymentEvent {
            event_id: "p".into(),
            order_id: "o".into(),
            payment_id: "pay".into(),
            occurred_at: 5,
            body: PaymentBody::PaymentFailed(PaymentFailed {
                reason: "card".into(),
            }),
        };
        assert_eq!(c.decode::<PaymentEvent>(&c.encode(&p).unwrap()).unwrap(), p);
        let l = LogisticsEvent {
            event_id: "l".into(),
            order_id: "o".into(),
            shipment_id: "sh".into(),
            occurred_at: 9,
            status: TrackingCode::OUT_FOR_DELIVERY,
            location: Some("Lyon".into()),
            detail: None,
        };
        assert_eq!(
            c.decode::<LogisticsEvent>(&c.encode(&l).unwrap()).unwrap(),
            l
        );
        let a = OversellAlert {
            event_id: "a".into(),
            sku: "s".into(),
            kind: AlertKind::NEGATIVE_AVAILABLE,
            order_id: None,
            requested: 0,
            available: -3,
            on_hand: 1,
            reserved: 4,
            occurred_at: 7,
        };
        assert_eq!(
            c.decode::<OversellAlert>(&c.encode(&a).unwrap()).unwrap(),
            a
        );
        let w = Watermark {
            source_partition: 3,
            stream_time: 42,
            end_of_input: true,
        };
        let bytes = c.encode(&w).unwrap();
        assert_eq!(c.kind_of(&bytes).unwrap(), RecordKind::Watermark);
        assert_eq!(c.decode::<Watermark>(&bytes).unwrap(), w);
    }

    #[test]
    fn header_is_magic_then_little_endian_fingerprint() {
        let c = codec();
        let bytes = c.encode(&placed()).unwrap();
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        let schema = Schema::parse_str(RecordKind::OrderEvent.schema_text()).unwrap();
        assert_eq!(&bytes[2..10], &fingerprint(&schema).unwrap());
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let c = codec();
        let good = c.encode(&placed()).unwrap();
        for cut in 0..good.len() {
            assert!(c.decode::<OrderEvent>(&good[..cut]).is_err(), "cut {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            c.decode::<OrderEvent>(&trailing),
            Err(DecodeError::Decode(_))
        ));
        let mut wrong_fp = good.clone();
        wrong_fp[5] ^= 0xff;
        assert!(matches!(
            c.decode::<OrderEvent>(&wrong_fp),
            Err(DecodeError::UnknownSchema(_))
        ));
        let payment_bytes = c
            .encode(&PaymentEvent {
                event_id: "p".into(),
                order_id: "o".into(),
                payment_id: "x".into(),
                occurred_at: 1,
                body: PaymentBody::PaymentCaptured(PaymentCaptured {
                    amount_minor: 1,
                    currency: "EUR".into(),
                }),
            })
            .unwrap();
        assert!(matches!(
            c.decode::<OrderEvent>(&payment_bytes),
            Err(DecodeError::UnknownSchema(_))
        ));
        // Union branch 7 does not exist.
        let mut bad_branch = good.clone();
        let branch_at = 10 + 1 + 3 + 1 + 3 + 6; // strings "e-1", "o-1", then the zigzag long
        bad_branch[branch_at] = 14;
        assert!(c.decode::<OrderEvent>(&bad_branch).is_err());
    }

    #[test]
    fn an_evolved_writer_schema_with_an_added_optional_field_is_resolved() {
        let evolved = RecordKind::PaymentEvent.schema_text().replacen(
            r#"{"name": "payment_id", "type": "string"},"#,
            r#"{"name": "payment_id", "type": "string"}, {"name": "channel", "type": ["null", "string"], "default": null},"#,
            1,
        );
        assert_ne!(evolved, RecordKind::PaymentEvent.schema_text());
        let c = Codec::with_writer_schemas(std::slice::from_ref(&evolved)).unwrap();
        let writer = Schema::parse_str(&evolved).unwrap();
        let mut record = apache_avro::types::Record::new(&writer).unwrap();
        record.put("event_id", "p-9");
        record.put("order_id", "o-9");
        record.put("payment_id", "pay-9");
        record.put(
            "channel",
            apache_avro::types::Value::Union(1, Box::new("web".into())),
        );
        record.put(
            "occurred_at",
            apache_avro::types::Value::TimestampMillis(77),
        );
        record.put(
            "body",
            apache_avro::types::Value::Union(
                1,
                Box::new(apache_avro::types::Value::Record(vec![(
                    "reason".into(),
                    "declined".into(),
                )])),
            ),
        );
        let mut bytes = SINGLE_OBJECT_MAGIC.to_vec();
        bytes.extend_from_slice(&fingerprint(&writer).unwrap());
        bytes.extend(
            GenericDatumWriter::builder(&writer)
                .build()
                .unwrap()
                .write_value_to_vec(record)
                .unwrap(),
        );
        let read = c.decode::<PaymentEvent>(&bytes).unwrap();
        assert_eq!(read.order_id, "o-9");
        assert_eq!(read.occurred_at, 77);
        assert_eq!(
            read.body,
            PaymentBody::PaymentFailed(PaymentFailed {
                reason: "declined".into()
            })
        );
    }

    /// A command written by the version before Forget existed still reads: its enum has one
    /// symbol fewer, so a Release's datum is the same bytes under the older fingerprint.
    #[test]
    fn a_command_written_with_the_previous_schema_still_reads() {
        let c = codec();
        let release = SkuCommand {
            command_id: "Release:o:s".into(),
            kind: SkuCommandKind::Release,
            order_id: "o".into(),
            sku: "s".into(),
            quantity: 2,
            occurred_at: 5,
            sequence: 1,
            cause_event_id: "e".into(),
            reason: Some("cancelled".into()),
        };
        let mut bytes = c.encode(&release).unwrap();
        let previous = Schema::parse_str(PREVIOUS_SCHEMAS[0]).unwrap();
        bytes[2..HEADER_LEN].copy_from_slice(&fingerprint(&previous).unwrap());
        assert_ne!(
            bytes,
            c.encode(&release).unwrap(),
            "the fingerprints differ"
        );
        assert_eq!(c.decode::<SkuCommand>(&bytes).unwrap(), release);
    }
}
