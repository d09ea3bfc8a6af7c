//! [`Object`]: an object as the cache holds it, and reading one from the bytes received.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use kubehub_kapi::resources::field_selectors;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::key::ObjKey;
use crate::select::Meta;

/// An object as the cache holds it: the JSON exactly as received (served as is, never
/// re-encoded), its key, its resourceVersion and its selector view.
///
/// `json` should own its allocation: a `Bytes` sliced out of a large read buffer keeps the
/// whole buffer alive for as long as the object is cached (copy such slices first).
#[derive(Debug, Clone)]
pub struct Object {
    /// The serialized object.
    pub json: Bytes,
    /// (namespace, name).
    pub key: ObjKey,
    /// `metadata.resourceVersion`.
    pub rv: u64,
    /// Labels and selectable fields.
    pub meta: Meta,
}

/// Why received bytes are not a cacheable object.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all.
    #[error("object is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not an object.
    #[error("object is not a JSON object")]
    NotAnObject,
    /// `metadata.name` absent, empty or not a string.
    #[error("object has no metadata.name")]
    MissingName,
    /// `metadata.resourceVersion` absent or not a string.
    #[error("object {0} has no metadata.resourceVersion")]
    MissingResourceVersion(ObjKey),
    /// `metadata.resourceVersion` is not an unsigned integer. kube-apiserver's resource
    /// versions are etcd revisions (decimal integers, one counter per cluster), which is what
    /// lets the cache order events, answer "not older than" and resume watches; a type whose
    /// versions are not integers (an aggregated API server with its own storage) is not
    /// cacheable and must be proxied.
    #[error("object {key}: metadata.resourceVersion {rv:?} is not an unsigned integer, so this type cannot be cached")]
    BadResourceVersion {
        /// The object.
        key: ObjKey,
        /// What it carried.
        rv: String,
    },
}

impl Object {
    /// Reads an object of `resource` in API group `group` from `json`: its namespace, name and
    /// resourceVersion, its labels and the type's selectable fields. Only those paths are
    /// materialised; the rest is validated as JSON and skipped.
    pub fn parse(group: &str, resource: &str, json: Bytes) -> Result<Object, ParseError> {
        const METADATA: [&str; 4] = [
            "metadata.namespace",
            "metadata.name",
            "metadata.resourceVersion",
            "metadata.labels",
        ];
        let mut paths: Vec<&str> = METADATA.to_vec();
        paths.extend(field_selectors(group, resource).iter().copied());
        let mut de = serde_json::Deserializer::from_slice(&json);
        let picked = Pick {
            paths: &paths,
            depth: 0,
        }
        .deserialize(&mut de)?;
        de.end()?;
        if !picked.is_object() {
            return Err(ParseError::NotAnObject);
        }
        let meta_str = |f: &str| picked.get("metadata")?.get(f)?.as_str();
        let name = meta_str("name")
            .filter(|n| !n.is_empty())
            .ok_or(ParseError::MissingName)?;
        let key = ObjKey::new(meta_str("namespace").unwrap_or(""), name);
        let rv = match meta_str("resourceVersion") {
            None => return Err(ParseError::MissingResourceVersion(key)),
            Some(rv) => rv.parse().map_err(|_| ParseError::BadResourceVersion {
                key: key.clone(),
                rv: rv.to_owned(),
            })?,
        };
        Ok(Object {
            meta: Meta::of(group, resource, &picked),
            json,
            key,
            rv,
        })
    }

    /// This object as a DELETED event at version `rv` carries it (kube-apiserver's deletion
    /// events carry the deletion's version, so a client resuming from the last version it saw
    /// never goes back in time): `metadata.resourceVersion` rewritten. A rare path (relists
    /// and confirming lists that find an object gone): the object is re-encoded.
    pub fn at_version(&self, rv: u64) -> Object {
        Object {
            json: with_resource_version(&self.json, rv),
            key: self.key.clone(),
            rv,
            meta: self.meta.clone(),
        }
    }

    /// Heap bytes this object holds beyond its JSON (key and selector view; the key's
    /// allocation is shared with the map's copy of it).
    pub fn heap_overhead(&self) -> usize {
        self.key.heap_size() + self.meta.heap_size()
    }
}

/// The `depth`-th dot-separated segment of `path`.
fn segment(path: &str, depth: usize) -> Option<&str> {
    path.split('.').nth(depth)
}

/// Deserializes only the subtrees on `paths` (every path here shares its first `depth`
/// segments with the value being read): a JSON object with those keys; anything that is not a
/// JSON object where one is expected reads as `null` (as `Value::get` would find nothing).
struct Pick<'p> {
    paths: &'p [&'p str],
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Pick<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// A map key, borrowed from the input when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Visitor<'de> for Pick<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        let mut wanted: Vec<&str> = Vec::new();
        while let Some(Key(k)) = map.next_key()? {
            wanted.clear();
            wanted.extend(
                self.paths
                    .iter()
                    .filter(|p| segment(p, self.depth) == Some(&*k)),
            );
            let value = if wanted.is_empty() {
                map.next_value::<IgnoredAny>()?;
                continue;
            } else if wanted.iter().any(|p| segment(p, self.depth + 1).is_none()) {
                map.next_value::<Value>()?
            } else {
                map.next_value_seed(Pick {
                    paths: &wanted,
                    depth: self.depth + 1,
                })?
            };
            out.insert(k.into_owned(), value);
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

/// `json` (an object) with `metadata.resourceVersion` set to `rv`, re-encoded; unchanged if it
/// is not an object with metadata. For the rare events whose object must carry another
/// version than its own: deletions found by a relist, and the previous state that a
/// selector's DELETED carries (kube-apiserver sends it at the event's version).
pub fn with_resource_version(json: &Bytes, rv: u64) -> Bytes {
    match serde_json::from_slice::<serde_json::Value>(json) {
        Ok(mut v) if v["metadata"].is_object() => {
            v["metadata"]["resourceVersion"] = serde_json::Value::String(rv.to_string());
            serde_json::to_vec(&v)
                .map(Into::into)
                .unwrap_or_else(|_| json.clone())
        }
        _ => json.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: &Value) -> Result<Object, ParseError> {
        Object::parse("", "pods", Bytes::from(serde_json::to_vec(v).unwrap()))
    }

    #[test]
    fn reads_what_selectors_need_and_keeps_the_bytes() {
        let pod = json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": "web-1", "namespace": "prod", "resourceVersion": "42",
                         "labels": {"app": "web"}, "annotations": {"a": "b"},
                         "managedFields": [{"manager": "x"}]},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i"}],
                     "hostNetwork": false},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "conditions": []},
        });
        let obj = parse(&pod).unwrap();
        assert_eq!(obj.key, ObjKey::new("prod", "web-1"));
        assert_eq!(obj.rv, 42);
        assert_eq!(obj.meta, Meta::of("", "pods", &pod));
        assert_eq!(obj.json, serde_json::to_vec(&pod).unwrap());
        // Escaped keys and odd shapes where objects are expected.
        let odd = br#"{"metadata":{"name":"a","resourceVersion":"7","labels":{"k\u0031":"v"}},"spec":[1,2],"status":"x"}"#;
        let obj = Object::parse("", "pods", Bytes::from_static(odd)).unwrap();
        assert_eq!(obj.meta.label("k1"), Some("v"));
        assert_eq!(obj.key, ObjKey::new("", "a"));
        assert_eq!(
            obj.meta,
            Meta::of("", "pods", &serde_json::from_slice(odd).unwrap())
        );
    }

    #[test]
    fn says_what_is_wrong() {
        let err = |b: &'static [u8]| {
            Object::parse("", "pods", Bytes::from_static(b))
                .unwrap_err()
                .to_string()
        };
        assert!(err(b"{").contains("not valid JSON"));
        assert!(err(br#"{"metadata":{}} x"#).contains("not valid JSON"));
        assert_eq!(err(b"[1]"), "object is not a JSON object");
        assert_eq!(
            err(br#"{"metadata":{"name":""}}"#),
            "object has no metadata.name"
        );
        assert_eq!(
            err(br#"{"metadata":{"name":"a","namespace":"n"}}"#),
            "object n/a has no metadata.resourceVersion"
        );
        assert!(err(br#"{"metadata":{"name":"a","resourceVersion":"x1"}}"#)
            .contains(r#"metadata.resourceVersion "x1" is not an unsigned integer"#));
    }
}
