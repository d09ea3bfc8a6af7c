//! Lists with kube-apiserver's semantics, shared by the cache and the simulator: which version
//! a list reads at, continue tokens, pages with `remainingItemCount`, and the list body.

use std::sync::Arc;

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use kubehub_kapi::query::{Version, VersionMatch};
use kubehub_kapi::resources::api_version;
use kubehub_kapi::table::ListMeta;
use kubehub_kapi::Status;
use kubehub_wire::ResourceType;
use serde_json::{json, Value};

use crate::key::ObjKey;
use crate::object::Object;
use crate::select::{Filter, Meta};

/// Where a list reads from and which page.
#[derive(Debug, Clone)]
pub struct ListRequest {
    /// resourceVersion semantics.
    pub version: Version,
    /// Page size (None: all).
    pub limit: Option<u64>,
    /// `continue` token from the previous page.
    pub continue_token: Option<String>,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// The matching objects, serialized.
    pub items: Vec<Bytes>,
    /// The version the list is consistent at.
    pub resource_version: u64,
    /// Token for the next page, if there is one.
    pub continue_token: Option<String>,
    /// Matching objects after this page, when a limit cut the list.
    pub remaining: Option<u64>,
}

impl ListPage {
    /// The page's list metadata.
    pub fn list_meta(&self) -> ListMeta {
        ListMeta {
            resource_version: self.resource_version.to_string(),
            continue_token: self.continue_token.clone(),
            remaining: self.remaining,
        }
    }
}

/// kube-apiserver's message for a continue token whose version has left the history.
pub const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

/// `base64(json)` continue tokens, shaped like kube-apiserver's: the version the list is
/// consistent at and the last key returned.
pub fn encode_continue(rv: u64, key: &ObjKey) -> String {
    let raw = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{}/{}", key.namespace(), key.name())});
    base64::engine::general_purpose::STANDARD.encode(raw.to_string())
}

/// Reads a token [`encode_continue`] made; 400 with kube-apiserver's wording otherwise.
pub fn decode_continue(token: &str) -> Result<(u64, ObjKey), Status> {
    let bad = |why: &str| Status::bad_request(format!("continue key is not valid: {why}"));
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token)
        .map_err(|_| bad("incorrect encoded start resourceVersion (version meta.k8s.io/v1)"))?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad("not JSON"))?;
    if v["v"] != "meta.k8s.io/v1" {
        return Err(bad("server does not recognize this encoded version"));
    }
    let rv = v["rv"]
        .as_u64()
        .ok_or_else(|| bad("missing resourceVersion"))?;
    let start = v["start"]
        .as_str()
        .ok_or_else(|| bad("missing start key"))?;
    let (ns, name) = start
        .split_once('/')
        .ok_or_else(|| bad("malformed start key"))?;
    Ok((rv, ObjKey::new(ns, name)))
}

/// The version a list reads at and the key it continues after, given the store's current
/// version and the oldest one its history can reconstruct: unset / `0` / `NotOlderThan` read
/// the current data (504 for a version the store has not reached), `Exact` reads that version,
/// a continue token the version of the list's first page (410 Expired once it has left the
/// history).
pub fn list_position(
    req: &ListRequest,
    current: u64,
    oldest: u64,
) -> Result<(u64, Option<ObjKey>), Status> {
    match &req.continue_token {
        Some(token) => {
            let (rv, key) = decode_continue(token)?;
            if rv < oldest {
                return Err(Status::expired(CONTINUE_EXPIRED));
            }
            Ok((rv, Some(key)))
        }
        None => match req.version {
            Version::MostRecent | Version::Any => Ok((current, None)),
            Version::At(n, _) if n > current => Err(Status::too_large_resource_version(n, current)),
            Version::At(_, VersionMatch::NotOlderThan) => Ok((current, None)),
            Version::At(n, VersionMatch::Exact) => Ok((n, None)),
        },
    }
}

/// A stored object as a list sees it.
pub trait Listed {
    /// Its selector view.
    fn meta(&self) -> &Meta;
    /// Its JSON.
    fn json(&self) -> &Bytes;
}

impl Listed for Object {
    fn meta(&self) -> &Meta {
        &self.meta
    }
    fn json(&self) -> &Bytes {
        &self.json
    }
}

impl<T: Listed> Listed for Arc<T> {
    fn meta(&self) -> &Meta {
        (**self).meta()
    }
    fn json(&self) -> &Bytes {
        (**self).json()
    }
}

/// One page from `entries` (in key order, starting after the continue key): the first `limit`
/// matches, the count of the rest, and a token resuming after the last one returned.
pub fn paginate<'a, T: Listed + 'a>(
    entries: impl Iterator<Item = (&'a ObjKey, &'a T)>,
    filter: &Filter,
    limit: Option<u64>,
    rv: u64,
) -> ListPage {
    let mut items = Vec::new();
    let mut last = None;
    let mut remaining = 0u64;
    let limit = limit.unwrap_or(u64::MAX);
    for (key, obj) in entries.filter(|(k, o)| filter.matches(k, o.meta())) {
        if (items.len() as u64) < limit {
            items.push(obj.json().clone());
            last = Some(key);
        } else {
            remaining += 1;
        }
    }
    // kube-apiserver counts the rest only for lists without selectors (with one, counting
    // would mean evaluating it over everything left).
    let selects = !filter.labels.is_empty() || !filter.fields.is_empty();
    let (continue_token, remaining) = match (remaining, last) {
        (0, _) | (_, None) => (None, None),
        (n, Some(k)) => (Some(encode_continue(rv, k)), (!selects).then_some(n)),
    };
    ListPage {
        items,
        resource_version: rv,
        continue_token,
        remaining,
    }
}

/// A JSON list body (`{"kind":"PodList",...,"items":[...]}`) as slices for a vectored write:
/// the head, then each item as stored with a static `,` between items, then the tail. No item
/// is copied.
pub fn list_body(t: &ResourceType, meta: &ListMeta, items: &[Bytes]) -> Vec<Bytes> {
    let mut parts = Vec::with_capacity(2 * items.len() + 2);
    parts.push(Bytes::from(format!(
        r#"{{"kind":"{}List","apiVersion":"{}","metadata":{},"items":["#,
        t.kind,
        api_version(&t.group, &t.version),
        meta.to_value()
    )));
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            parts.push(Bytes::from_static(b","));
        }
        parts.push(item.clone());
    }
    parts.push(Bytes::from_static(b"]}"));
    parts
}

/// The slices in one buffer.
pub fn concat(parts: &[Bytes]) -> Bytes {
    match parts {
        [one] => one.clone(),
        _ => {
            let mut out = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for p in parts {
                out.put_slice(p);
            }
            out.freeze()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let key = ObjKey::new("ns", "name-1");
        let t = encode_continue(17, &key);
        assert_eq!(decode_continue(&t).unwrap(), (17, key));
        assert_eq!(decode_continue("!!").unwrap_err().code, 400);
        let other = base64::engine::general_purpose::STANDARD.encode(r#"{"v":"x","rv":1}"#);
        assert_eq!(decode_continue(&other).unwrap_err().code, 400);
    }

    #[test]
    fn positions() {
        let req = |version, continue_token: Option<String>| ListRequest {
            version,
            limit: None,
            continue_token,
        };
        let exact = |n| Version::At(n, VersionMatch::Exact);
        assert_eq!(list_position(&req(Version::Any, None), 9, 5).unwrap().0, 9);
        assert_eq!(list_position(&req(exact(6), None), 9, 5).unwrap().0, 6);
        assert_eq!(
            list_position(&req(exact(10), None), 9, 5).unwrap_err().code,
            504
        );
        let tok = encode_continue(4, &ObjKey::new("", "a"));
        let err = list_position(&req(Version::MostRecent, Some(tok)), 9, 5).unwrap_err();
        assert_eq!((err.code, err.reason), (410, "Expired"));
    }

    #[test]
    fn body_slices_concatenate_to_a_list() {
        let t = kubehub_kapi::resources::builtin()
            .iter()
            .find(|t| t.resource == "pods")
            .unwrap();
        let items = [Bytes::from_static(b"{\"a\":1}"), Bytes::from_static(b"{}")];
        let body = concat(&list_body(t, &ListMeta::default(), &items));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["kind"], "PodList");
        assert_eq!(v["items"], json!([{"a": 1}, {}]));
        let empty = concat(&list_body(t, &ListMeta::default(), &[]));
        assert!(serde_json::from_slice::<Value>(&empty).unwrap()["items"]
            .as_array()
            .unwrap()
            .is_empty());
    }
}
