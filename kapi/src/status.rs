//! `Status` objects: the body of every error kube-apiserver returns.
//!
//! The constructors produce the exact `message`, `reason` and `details` kube-apiserver uses for
//! the same condition, since clients match on them (kubectl prints `message`; client-go's
//! `IsNotFound`, `IsConflict`, `IsGone` … look at `reason` and `code`).

use serde::Serialize;
use serde_json::{json, Value};

/// A `Status` (failure) with its HTTP code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct Status {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason, e.g. `NotFound`.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// `details`, when kube-apiserver sends them (boxed: errors stay small to return).
    pub details: Option<Box<Details>>,
}

/// `Status.details`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Details {
    /// The object's name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The API group (omitted for core).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// The resource (kube-apiserver puts the plural resource name here).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Field-level causes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<Cause>,
    /// Seconds the client should wait before retrying.
    #[serde(rename = "retryAfterSeconds", skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u32>,
}

/// One entry of `Status.details.causes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cause {
    /// e.g. `FieldValueInvalid`.
    pub reason: String,
    /// What is wrong.
    pub message: String,
    /// The field path, e.g. `metadata.name`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub field: String,
}

/// `resource` or `resource.group`, as kube-apiserver names a resource in messages.
pub fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    }
}

fn details(group: &str, resource: &str, name: &str) -> Option<Box<Details>> {
    Some(Box::new(Details {
        name: name.to_owned(),
        group: group.to_owned(),
        kind: resource.to_owned(),
        ..Details::default()
    }))
}

impl Status {
    /// A status without details.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Status {
        Status {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Status {
        Status::new(400, "BadRequest", message)
    }

    /// 401 Unauthorized, as for a missing or invalid bearer token.
    pub fn unauthorized() -> Status {
        Status::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 Forbidden for a resource request, worded as kube-apiserver's authorization filter
    /// words it: `pods "web" is forbidden: User "alice" cannot create resource "pods/exec" in
    /// API group "" in the namespace "default"`, then `: {reason}` when the authorizer gave one.
    /// `resource` includes the subresource (`pods/exec`); `name` and `namespace` may be empty.
    pub fn forbidden(
        user: &str,
        verb: &str,
        group: &str,
        resource: &str,
        name: &str,
        namespace: &str,
        reason: &str,
    ) -> Status {
        let scope = if namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace \"{namespace}\"")
        };
        let base = resource.split('/').next().unwrap_or(resource);
        let what = if name.is_empty() {
            qualified(group, base)
        } else {
            format!("{} \"{name}\"", qualified(group, base))
        };
        let mut msg = format!(
            "{what} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}"
        );
        if !reason.is_empty() {
            msg.push_str(": ");
            msg.push_str(reason);
        }
        let mut s = Status::new(403, "Forbidden", msg);
        s.details = details(group, base, name);
        s
    }

    /// 403 Forbidden for a non-resource request (`/version`, `/apis`, …), as kube-apiserver
    /// words it: `forbidden: User "alice" cannot get path "/version"`.
    pub fn forbidden_path(user: &str, verb: &str, path: &str, reason: &str) -> Status {
        let mut msg = format!("forbidden: User \"{user}\" cannot {verb} path \"{path}\"");
        if !reason.is_empty() {
            msg.push_str(": ");
            msg.push_str(reason);
        }
        Status::new(403, "Forbidden", msg)
    }

    /// 404 NotFound for an object.
    pub fn not_found(group: &str, resource: &str, name: &str) -> Status {
        let mut s = Status::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(group, resource)),
        );
        s.details = details(group, resource, name);
        s
    }

    /// 404 for a path no API serves.
    pub fn no_such_resource() -> Status {
        let mut s = Status::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
        s.details = Some(Box::default());
        s
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed() -> Status {
        let mut s = Status::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        );
        s.details = Some(Box::default());
        s
    }

    /// 406 NotAcceptable.
    pub fn not_acceptable(accepted: &str) -> Status {
        Status::new(
            406,
            "NotAcceptable",
            format!("only the following media types are accepted: {accepted}"),
        )
    }

    /// 409 AlreadyExists.
    pub fn already_exists(group: &str, resource: &str, name: &str) -> Status {
        let mut s = Status::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(group, resource)),
        );
        s.details = details(group, resource, name);
        s
    }

    /// 409 Conflict on a stale resourceVersion (or a failed precondition).
    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> Status {
        let mut s = Status::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(group, resource)
            ),
        );
        s.details = details(group, resource, name);
        s
    }

    /// The `why` of [`Status::conflict`] for a stale resourceVersion.
    pub const MODIFIED: &'static str = "the object has been modified; please apply your changes to the latest version and try again";

    /// 410 Gone with reason Expired: a resourceVersion older than the history kept.
    pub fn expired(message: impl Into<String>) -> Status {
        Status::new(410, "Expired", message)
    }

    /// 410 for a watch from a version outside the window, as kube-apiserver words it.
    pub fn too_old_resource_version(requested: u64, oldest: u64) -> Status {
        Status::expired(format!("too old resource version: {requested} ({oldest})"))
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(got: &str, accepted: &[&str]) -> Status {
        let _ = got;
        Status::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }

    /// 422 Invalid, with one cause.
    pub fn invalid(group: &str, kind: &str, name: &str, field: &str, message: &str) -> Status {
        let mut s = Status::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {field}: {message}"),
        );
        s.details = Some(Box::new(Details {
            name: name.to_owned(),
            group: group.to_owned(),
            kind: kind.to_owned(),
            causes: vec![Cause {
                reason: "FieldValueInvalid".into(),
                message: message.to_owned(),
                field: field.to_owned(),
            }],
            retry_after_seconds: None,
        }));
        s
    }

    /// 504 Timeout for a list at a resourceVersion newer than the server has.
    pub fn too_large_resource_version(requested: u64, current: u64) -> Status {
        let mut s = Status::new(
            504,
            "Timeout",
            format!("Too large resource version: {requested}, current: {current}"),
        );
        s.details = Some(Box::new(Details {
            causes: vec![Cause {
                reason: "ResourceVersionTooLarge".into(),
                message: "Too large resource version".into(),
                field: String::new(),
            }],
            retry_after_seconds: Some(1),
            ..Details::default()
        }));
        s
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Status {
        Status::new(500, "InternalError", message)
    }

    /// 503 ServiceUnavailable.
    pub fn unavailable(message: impl Into<String>) -> Status {
        Status::new(503, "ServiceUnavailable", message)
    }

    /// The Status as JSON.
    pub fn to_value(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        });
        // `code` is omitted when zero, as Go's `omitempty` does (the Status on an exec error
        // stream has none).
        if self.code != 0 {
            v["code"] = json!(self.code);
        }
        if let Some(d) = &self.details {
            v["details"] = serde_json::to_value(d).unwrap_or(Value::Null);
        }
        v
    }

    /// The Status as a JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_value()).unwrap_or_default()
    }
}

/// A `Status` with `status: Success`, as returned by some deletes.
pub fn success(group: &str, resource: &str, name: &str, uid: &str) -> Value {
    let mut details = json!({ "name": name, "kind": resource, "uid": uid });
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_is_worded_like_kube_apiserver() {
        let s = Status::forbidden("alice", "create", "", "pods/exec", "web", "default", "");
        assert_eq!(
            s.message,
            "pods \"web\" is forbidden: User \"alice\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"default\""
        );
        assert_eq!((s.code, s.reason), (403, "Forbidden"));
        let v = s.to_value();
        assert_eq!(v["details"], json!({"name": "web", "kind": "pods"}));
        let s = Status::forbidden("bob", "list", "apps", "deployments", "", "", "no grant");
        assert_eq!(
            s.message,
            "deployments.apps is forbidden: User \"bob\" cannot list resource \"deployments\" in API group \"apps\" at the cluster scope: no grant"
        );
        let s = Status::forbidden_path("bob", "get", "/version", "");
        assert_eq!(
            s.message,
            "forbidden: User \"bob\" cannot get path \"/version\""
        );
    }

    #[test]
    fn not_found_is_shaped_like_kube_apiserver() {
        let v = Status::not_found("apps", "deployments", "web").to_value();
        assert_eq!(
            v,
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "deployments.apps \"web\" not found", "reason": "NotFound",
                "details": {"name": "web", "group": "apps", "kind": "deployments"}, "code": 404
            })
        );
        let v = Status::not_found("", "pods", "x").to_value();
        assert_eq!(v["details"], json!({"name": "x", "kind": "pods"}));
    }

    #[test]
    fn conflict_and_gone() {
        let s = Status::conflict("", "pods", "p", Status::MODIFIED);
        assert_eq!(s.code, 409);
        assert_eq!(s.message, "Operation cannot be fulfilled on pods \"p\": the object has been modified; please apply your changes to the latest version and try again");
        let g = Status::too_old_resource_version(5, 10).to_value();
        assert_eq!(g["code"], 410);
        assert_eq!(g["reason"], "Expired");
        assert_eq!(g["message"], "too old resource version: 5 (10)");
        let t = Status::too_large_resource_version(99, 10).to_value();
        assert_eq!(t["details"]["retryAfterSeconds"], 1);
        assert_eq!(
            t["details"]["causes"][0]["reason"],
            "ResourceVersionTooLarge"
        );
    }
}
