//! The Avro specification's Parsing Canonical Form of a schema and the CRC-64-AVRO
//! fingerprint of it, computed as every conforming library computes them (Java's
//! `SchemaNormalization`, fastavro), so that a single-object record's fingerprint means the
//! same schema to a producer or consumer written in any language.
//!
//! apache-avro's own `canonical_form` keeps a logical-typed primitive as `{"type":"long"}`,
//! where the specification reduces it to `"long"` (`logicalType` is not a parsing attribute);
//! its fingerprints therefore match no other library's for any schema with a logical type.

use std::collections::HashSet;

use apache_avro::rabin::Rabin;
use apache_avro::Schema;
use digest::Digest;
use serde_json::{Map, Value};

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The schema's Parsing Canonical Form. It is built from the schema as apache-avro parsed it,
/// so names arrive resolved against their enclosing namespaces.
pub fn canonical_form(schema: &Schema) -> Result<String, serde_json::Error> {
    let json = serde_json::to_value(schema)?;
    let mut out = String::new();
    write(&json, &mut HashSet::new(), &mut out);
    Ok(out)
}

/// The 8-byte little-endian CRC-64-AVRO fingerprint of a canonical form, as single-object
/// encoding writes it after `C3 01`.
pub fn fingerprint(canonical_form: &str) -> [u8; 8] {
    let digest = Rabin::digest(canonical_form.as_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

fn write(json: &Value, defined: &mut HashSet<String>, out: &mut String) {
    match json {
        // A primitive, or a named type referred to by its full name.
        Value::String(name) => push_string(out, name),
        Value::Array(branches) => {
            out.push('[');
            for (i, branch) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(branch, defined, out);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(map, defined, out),
        other => out.push_str(&other.to_string()),
    }
}

fn write_object(map: &Map<String, Value>, defined: &mut HashSet<String>, out: &mut String) {
    let ty = match map.get("type") {
        Some(Value::String(ty)) => ty.as_str(),
        // `{"type": {...}}` is the nested schema itself.
        Some(nested) => return write(nested, defined, out),
        None => return out.push_str("{}"),
    };
    match ty {
        // [PRIMITIVES]: every other attribute (logicalType, precision...) is dropped.
        t if PRIMITIVES.contains(&t) => push_string(out, t),
        "record" | "error" | "enum" | "fixed" => {
            let name = full_name(map);
            // A named type is written in full once; later uses are its name.
            if !defined.insert(name.clone()) {
                return push_string(out, &name);
            }
            // [ORDER]: name, type, fields, symbols, items, values, size; [STRIP] the rest.
            out.push_str("{\"name\":");
            push_string(out, &name);
            out.push_str(",\"type\":");
            push_string(out, ty);
            match ty {
                "enum" => {
                    out.push_str(",\"symbols\":[");
                    let symbols = map.get("symbols").and_then(Value::as_array);
                    for (i, s) in symbols.into_iter().flatten().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        push_string(out, s.as_str().unwrap_or_default());
                    }
                    out.push(']');
                }
                "fixed" => {
                    let size = map.get("size").and_then(Value::as_u64).unwrap_or_default();
                    out.push_str(&format!(",\"size\":{size}"));
                }
                _ => {
                    out.push_str(",\"fields\":[");
                    let fields = map.get("fields").and_then(Value::as_array);
                    for (i, field) in fields.into_iter().flatten().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str("{\"name\":");
                        let field_name = field.get("name").and_then(Value::as_str);
                        push_string(out, field_name.unwrap_or_default());
                        out.push_str(",\"type\":");
                        write(field.get("type").unwrap_or(&Value::Null), defined, out);
                        out.push('}');
                    }
                    out.push(']');
                }
            }
            out.push('}');
        }
        "array" => {
            out.push_str("{\"type\":\"array\",\"items\":");
            write(map.get("items").unwrap_or(&Value::Null), defined, out);
            out.push('}');
        }
        "map" => {
            out.push_str("{\"type\":\"map\",\"values\":");
            write(map.get("values").unwrap_or(&Value::Null), defined, out);
            out.push('}');
        }
        // `{"type": "a.Named"}`: a reference written as an object.
        reference => push_string(out, reference),
    }
}

/// [FULLNAMES]: the namespace joined to a short name.
fn full_name(map: &Map<String, Value>) -> String {
    let name = map.get("name").and_then(Value::as_str).unwrap_or_default();
    match map.get("namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() && !name.contains('.') => format!("{ns}.{name}"),
        _ => name.to_string(),
    }
}

/// [STRINGS]: a JSON string literal with no escapes beyond what JSON requires.
fn push_string(out: &mut String, s: &str) {
    out.push_str(&Value::String(s.to_string()).to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(text: &str) -> String {
        canonical_form(&Schema::parse_str(text).unwrap()).unwrap()
    }

    /// The Avro project's canonical-form test vectors (`share/test/data/schema-tests.txt`):
    /// input, canonical form, and the fingerprint as a signed 64-bit number where it gives
    /// one. The empty union (016) is left out: apache-avro does not parse it.
    const VECTORS: &[(&str, &str, Option<i64>)] = &[
        (r#""null""#, r#""null""#, Some(7195948357588979594)),
        (r#"{"type":"null"}"#, r#""null""#, None),
        (r#""boolean""#, r#""boolean""#, Some(-6970731678124411036)),
        (r#"{"type":"boolean"}"#, r#""boolean""#, None),
        (r#""int""#, r#""int""#, Some(8247732601305521295)),
        (r#"{"type":"int"}"#, r#""int""#, None),
        (r#""long""#, r#""long""#, Some(-3434872931120570953)),
        (r#"{"type":"long"}"#, r#""long""#, None),
        (r#""float""#, r#""float""#, Some(5583340709985441680)),
        (r#""double""#, r#""double""#, Some(-8181574048448539266)),
        (r#""bytes""#, r#""bytes""#, Some(5746618253357095269)),
        (r#""string""#, r#""string""#, Some(-8142146995180207161)),
        (r#"[ "int"  ]"#, r#"["int"]"#, Some(-5232228896498058493)),
        (
            r#"[ "int" , {"type":"boolean"} ]"#,
            r#"["int","boolean"]"#,
            Some(5392556393470105090),
        ),
        (
            r#"{"fields":[], "type":"record", "name":"foo"}"#,
            r#"{"name":"foo","type":"record","fields":[]}"#,
            Some(-4824392279771201922),
        ),
        (
            r#"{"fields":[], "type":"record", "name":"foo", "namespace":"x.y"}"#,
            r#"{"name":"x.y.foo","type":"record","fields":[]}"#,
            Some(5916914534497305771),
        ),
        (
            r#"{"fields":[], "type":"record", "name":"a.b.foo", "namespace":"x.y"}"#,
            r#"{"name":"a.b.foo","type":"record","fields":[]}"#,
            Some(-4616218487480524110),
        ),
        (
            r#"{"fields":[], "type":"record", "name":"foo", "doc":"foo", "aliases":["foo","bar"]}"#,
            r#"{"name":"foo","type":"record","fields":[]}"#,
            Some(-4824392279771201922),
        ),
        (
            r#"{"fields":[{"type":{"type":"boolean"}, "name":"f1"}], "type":"record", "name":"foo"}"#,
            r#"{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}"#,
            Some(7843277075252814651),
        ),
        (
            r#"{ "fields":[{"type":"boolean", "aliases":[], "name":"f1", "default":true},
                {"order":"descending","name":"f2","doc":"Hello","type":"int"}],
                "type":"record", "name":"foo"}"#,
            r#"{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},{"name":"f2","type":"int"}]}"#,
            Some(-4860222112080293046),
        ),
        (
            r#"{"type":"enum", "name":"foo", "symbols":["A1"]}"#,
            r#"{"name":"foo","type":"enum","symbols":["A1"]}"#,
            Some(-6342190197741309591),
        ),
        (
            r#"{"namespace":"x.y.z", "type":"enum", "name":"foo", "doc":"foo bar", "symbols":["A1", "A2"]}"#,
            r#"{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}"#,
            Some(-4448647247586288245),
        ),
        (
            r#"{"name":"foo","type":"fixed","size":15}"#,
            r#"{"name":"foo","type":"fixed","size":15}"#,
            Some(1756455273707447556),
        ),
        (
            r#"{"namespace":"x.y.z", "type":"fixed", "name":"foo", "doc":"foo bar", "size":32}"#,
            r#"{"name":"x.y.z.foo","type":"fixed","size":32}"#,
            Some(-3064184465700546786),
        ),
        (
            r#"{ "items":{"type":"null"}, "type":"array"}"#,
            r#"{"type":"array","items":"null"}"#,
            Some(-589620603366471059),
        ),
        (
            r#"{ "values":"string", "type":"map"}"#,
            r#"{"type":"map","values":"string"}"#,
            Some(-8732877298790414990),
        ),
        (
            r#"{"name":"PigValue","type":"record",
                "fields":[{"name":"value", "type":["null", "int", "long", "PigValue"]}]}"#,
            r#"{"name":"PigValue","type":"record","fields":[{"name":"value","type":["null","int","long","PigValue"]}]}"#,
            Some(-1759257747318642341),
        ),
    ];

    #[test]
    fn the_avro_projects_test_vectors() {
        for (input, canonical, fp) in VECTORS {
            let got = form(input);
            assert_eq!(&got, canonical, "canonical form of {input}");
            if let Some(fp) = fp {
                assert_eq!(
                    i64::from_le_bytes(fingerprint(&got)),
                    *fp,
                    "fingerprint of {input}"
                );
            }
        }
    }

    #[test]
    fn a_logical_type_is_not_part_of_the_form() {
        assert_eq!(
            form(r#"{"type":"long","logicalType":"timestamp-millis"}"#),
            r#""long""#
        );
        assert_eq!(
            form(r#"{"type":"bytes","logicalType":"decimal","precision":4,"scale":2}"#),
            r#""bytes""#
        );
    }
}
