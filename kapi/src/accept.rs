//! Content negotiation: which representation a client asked for in `Accept`.
//!
//! kubectl asks for `application/json;as=Table;v=v1;g=meta.k8s.io` (with `v1beta1` and plain
//! JSON as fallbacks); metadata-only informers ask for `as=PartialObjectMetadataList`; most
//! clients ask for plain JSON or send no `Accept` at all. The first supported media range in the
//! client's order wins; protobuf is not offered, so a client that accepts only protobuf gets 406.

use crate::status::Status;

/// The representation to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wants {
    /// The object or list as JSON.
    Json,
    /// A `meta.k8s.io` Table of the given version (`v1` or `v1beta1`).
    Table(&'static str),
    /// `PartialObjectMetadata` (single object) or `PartialObjectMetadataList` (list), of the
    /// given `meta.k8s.io` version.
    Metadata(&'static str),
}

/// Media types this server produces, for the 406 message.
pub const PRODUCES: &str = "application/json, application/json;as=Table;v=v1;g=meta.k8s.io, application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io";

/// Chooses the representation for an `Accept` header value.
pub fn negotiate(accept: Option<&str>) -> Result<Wants, Status> {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Ok(Wants::Json);
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        if !matches!(media.as_str(), "application/json" | "application/*" | "*/*") {
            continue;
        }
        let (mut as_, mut g, mut v) = (None, None, None);
        for p in parts {
            if let Some((k, val)) = p.split_once('=') {
                match k.trim() {
                    "as" => as_ = Some(val.trim()),
                    "g" => g = Some(val.trim()),
                    "v" => v = Some(val.trim()),
                    _ => {}
                }
            }
        }
        let meta_version = match (g, v) {
            (Some("meta.k8s.io"), Some("v1")) => Some("v1"),
            (Some("meta.k8s.io"), Some("v1beta1")) => Some("v1beta1"),
            _ => None,
        };
        match (as_, meta_version) {
            (None, _) => return Ok(Wants::Json),
            (Some("Table"), Some(ver)) => return Ok(Wants::Table(ver)),
            (Some("PartialObjectMetadata" | "PartialObjectMetadataList"), Some(ver)) => {
                return Ok(Wants::Metadata(ver))
            }
            // An `as=` we do not produce: try the next range.
            _ => continue,
        }
    }
    Err(Status::not_acceptable(PRODUCES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_and_friends() {
        assert_eq!(negotiate(None).unwrap(), Wants::Json);
        assert_eq!(negotiate(Some("application/json")).unwrap(), Wants::Json);
        assert_eq!(negotiate(Some("*/*")).unwrap(), Wants::Json);
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(Some(kubectl)).unwrap(), Wants::Table("v1"));
        assert_eq!(
            negotiate(Some(
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
            ))
            .unwrap(),
            Wants::Metadata("v1")
        );
        assert_eq!(
            negotiate(Some(
                "application/vnd.kubernetes.protobuf, application/json"
            ))
            .unwrap(),
            Wants::Json
        );
        assert_eq!(
            negotiate(Some(
                "application/json;as=Table;v=v2;g=meta.k8s.io, application/json"
            ))
            .unwrap(),
            Wants::Json
        );
    }

    #[test]
    fn protobuf_only_is_406() {
        let err = negotiate(Some("application/vnd.kubernetes.protobuf")).unwrap_err();
        assert_eq!(err.code, 406);
        assert_eq!(negotiate(Some("text/html")).unwrap_err().code, 406);
    }
}
