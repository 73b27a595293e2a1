//! A minimal decoder for Kubernetes protobuf request bodies of the simplest core kinds
//! (Namespace, ConfigMap, Secret), which kubectl's `create namespace|configmap|secret`
//! generators send as `application/vnd.kubernetes.protobuf`. Other kinds are refused (415) so
//! clients know to send JSON. Pure functions.

use serde_json::{json, Map, Value};

/// Reads protobuf fields: `(field number, wire type, payload)`.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err("varint too long".into())
    }

    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (num, wire) = (key >> 3, key & 7);
        let field = match wire {
            0 => Field::Varint(self.varint()?),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
                let end = self
                    .pos
                    .checked_add(len)
                    .filter(|e| *e <= self.buf.len())
                    .ok_or("truncated field")?;
                let bytes = &self.buf[self.pos..end];
                self.pos = end;
                Field::Bytes(bytes)
            }
            1 => {
                self.pos += 8;
                Field::Fixed
            }
            5 => {
                self.pos += 4;
                Field::Fixed
            }
            other => return Err(format!("unsupported wire type {other}")),
        };
        if self.pos > self.buf.len() {
            return Err("truncated field".into());
        }
        Ok(Some((num, field)))
    }
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|e| e.to_string())
}

/// A `map<string, string|bytes>` entry (key = 1, value = 2).
fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), String> {
    let mut r = Reader::new(b);
    let (mut k, mut v) = (String::new(), Value::String(String::new()));
    while let Some((num, f)) = r.next()? {
        match (num, f) {
            (1, Field::Bytes(x)) => k = text(x)?,
            (2, Field::Bytes(x)) if bytes_value => v = json!(crate::defaults::base64(x)),
            (2, Field::Bytes(x)) => v = json!(text(x)?),
            _ => {}
        }
    }
    Ok((k, v))
}

fn object_meta(b: &[u8]) -> Result<Value, String> {
    let mut r = Reader::new(b);
    let mut m = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = Vec::new();
    while let Some((num, f)) = r.next()? {
        match (num, f) {
            (1, Field::Bytes(x)) => {
                m.insert("name".into(), json!(text(x)?));
            }
            (2, Field::Bytes(x)) => {
                m.insert("generateName".into(), json!(text(x)?));
            }
            (3, Field::Bytes(x)) => {
                m.insert("namespace".into(), json!(text(x)?));
            }
            (11, Field::Bytes(x)) => {
                let (k, v) = map_entry(x, false)?;
                labels.insert(k, v);
            }
            (12, Field::Bytes(x)) => {
                let (k, v) = map_entry(x, false)?;
                annotations.insert(k, v);
            }
            (14, Field::Bytes(x)) => finalizers.push(json!(text(x)?)),
            (13 | 17, _) => {
                return Err(
                    "ownerReferences and managedFields are not supported in protobuf bodies".into(),
                )
            }
            _ => {}
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(m))
}

fn object(kind: &str, raw: &[u8]) -> Result<Value, String> {
    let mut out = json!({"apiVersion": "v1", "kind": kind});
    let mut r = Reader::new(raw);
    let mut data = Map::new();
    let mut binary = Map::new();
    while let Some((num, f)) = r.next()? {
        match (kind, num, f) {
            (_, 1, Field::Bytes(x)) => out["metadata"] = object_meta(x)?,
            ("Namespace", 2, Field::Bytes(x)) => {
                let mut fins = Vec::new();
                let mut s = Reader::new(x);
                while let Some((n, f)) = s.next()? {
                    if let (1, Field::Bytes(y)) = (n, f) {
                        fins.push(json!(text(y)?));
                    }
                }
                out["spec"] = json!({"finalizers": fins});
            }
            ("ConfigMap", 2, Field::Bytes(x)) => {
                let (k, v) = map_entry(x, false)?;
                data.insert(k, v);
            }
            ("ConfigMap", 3, Field::Bytes(x)) => {
                let (k, v) = map_entry(x, true)?;
                binary.insert(k, v);
            }
            ("ConfigMap", 4, Field::Varint(v)) | ("Secret", 5, Field::Varint(v)) => {
                out["immutable"] = json!(v != 0)
            }
            ("Secret", 2, Field::Bytes(x)) => {
                let (k, v) = map_entry(x, true)?;
                data.insert(k, v);
            }
            ("Secret", 3, Field::Bytes(x)) => out["type"] = json!(text(x)?),
            ("Secret", 4, Field::Bytes(x)) => {
                let (k, v) = map_entry(x, false)?;
                let encoded = crate::defaults::base64(v.as_str().unwrap_or("").as_bytes());
                data.insert(k, json!(encoded));
            }
            _ => {}
        }
    }
    if !data.is_empty() {
        out["data"] = Value::Object(data);
    }
    if !binary.is_empty() {
        out["binaryData"] = Value::Object(binary);
    }
    Ok(out)
}

/// Decodes a `k8s\0`-prefixed protobuf body of a supported kind into its JSON form.
/// The string fields of a message, by field number (`names[n - 1]` names field `n`).
fn string_fields(b: &[u8], names: &[&str]) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    let mut r = Reader::new(b);
    while let Some((n, f)) = r.next()? {
        let name = usize::try_from(n)
            .ok()
            .and_then(|n| names.get(n.wrapping_sub(1)));
        if let (Some(name), Field::Bytes(x)) = (name, f) {
            out.insert((*name).to_string(), json!(text(x)?));
        }
    }
    Ok(out)
}

/// `authorization.k8s.io/v1` (Self)SubjectAccessReview, as `kubectl auth can-i` sends it.
fn access_review(kind: &str, raw: &[u8]) -> Result<Value, String> {
    const RESOURCE: &[&str] = &[
        "namespace",
        "verb",
        "group",
        "version",
        "resource",
        "subresource",
        "name",
    ];
    let mut out = json!({"apiVersion": "authorization.k8s.io/v1", "kind": kind, "metadata": {}});
    let mut spec = Map::new();
    let mut groups = Vec::new();
    let mut r = Reader::new(raw);
    while let Some((num, f)) = r.next()? {
        let (2, Field::Bytes(x)) = (num, f) else {
            continue;
        };
        let mut s = Reader::new(x);
        while let Some((n, f)) = s.next()? {
            match (n, f) {
                (1, Field::Bytes(y)) => {
                    spec.insert(
                        "resourceAttributes".into(),
                        Value::Object(string_fields(y, RESOURCE)?),
                    );
                }
                (2, Field::Bytes(y)) => {
                    let attrs = string_fields(y, &["path", "verb"])?;
                    spec.insert("nonResourceAttributes".into(), Value::Object(attrs));
                }
                (3, Field::Bytes(y)) => {
                    spec.insert("user".into(), json!(text(y)?));
                }
                (4, Field::Bytes(y)) => groups.push(json!(text(y)?)),
                (6, Field::Bytes(y)) => {
                    spec.insert("uid".into(), json!(text(y)?));
                }
                _ => {}
            }
        }
    }
    if !groups.is_empty() {
        spec.insert("groups".into(), Value::Array(groups));
    }
    out["spec"] = Value::Object(spec);
    Ok(out)
}

/// `DeleteOptions`, as client-go's typed clients (helm's release storage) send them.
fn delete_options(raw: &[u8]) -> Result<Value, String> {
    let mut out = Map::new();
    let mut dry_run = Vec::new();
    let mut r = Reader::new(raw);
    while let Some((num, f)) = r.next()? {
        match (num, f) {
            (1, Field::Varint(v)) => {
                // int64 on the wire: two's complement in a u64.
                out.insert("gracePeriodSeconds".into(), json!(v as i64));
            }
            (2, Field::Bytes(x)) => {
                out.insert(
                    "preconditions".into(),
                    Value::Object(string_fields(x, &["uid", "resourceVersion"])?),
                );
            }
            (3, Field::Varint(v)) => {
                out.insert("orphanDependents".into(), json!(v != 0));
            }
            (4, Field::Bytes(x)) => {
                out.insert("propagationPolicy".into(), json!(text(x)?));
            }
            (5, Field::Bytes(x)) => dry_run.push(json!(text(x)?)),
            _ => {}
        }
    }
    if !dry_run.is_empty() {
        out.insert("dryRun".into(), Value::Array(dry_run));
    }
    Ok(Value::Object(out))
}

pub fn decode(body: &[u8]) -> Result<Value, String> {
    let payload = body
        .strip_prefix(b"k8s\x00")
        .ok_or("missing the k8s protobuf prefix")?;
    let mut r = Reader::new(payload);
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((num, f)) = r.next()? {
        match (num, f) {
            (1, Field::Bytes(tm)) => {
                let mut t = Reader::new(tm);
                while let Some((n, f)) = t.next()? {
                    match (n, f) {
                        (1, Field::Bytes(x)) => api_version = text(x)?,
                        (2, Field::Bytes(x)) => kind = text(x)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(x)) => raw = x,
            _ => {}
        }
    }
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace" | "ConfigMap" | "Secret") => object(&kind, raw),
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview" | "SubjectAccessReview") => {
            access_review(&kind, raw)
        }
        (_, "DeleteOptions") => delete_options(raw),
        _ => Err(format!("protobuf bodies are supported only for v1 Namespace, ConfigMap and Secret, not {api_version} {kind}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(num << 3) | 2, payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decodes_a_configmap_envelope() {
        // The runtime.Unknown envelope with TypeMeta and a ConfigMap with name, label and data.
        let meta = [
            field(1, b"cfg"),
            field(11, &[field(1, b"app"), field(2, b"web")].concat()),
        ]
        .concat();
        let cm = [
            field(1, &meta),
            field(2, &[field(1, b"k"), field(2, b"v")].concat()),
        ]
        .concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let mut body = b"k8s\x00".to_vec();
        body.extend([field(1, &type_meta), field(2, &cm)].concat());
        let v = decode(&body).expect("decodes");
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cfg", "labels": {"app": "web"}}, "data": {"k": "v"}})
        );
    }

    #[test]
    fn other_kinds_are_refused() {
        // Kinds without a decoder are an error (answered with 415), never a guess.
        let type_meta = [field(1, b"apps/v1"), field(2, b"Deployment")].concat();
        let mut body = b"k8s\x00".to_vec();
        body.extend(field(1, &type_meta));
        assert!(decode(&body).is_err());
        assert!(decode(b"junk").is_err());
    }
}
