//! `review`: `kubectl auth can-i` tells the truth.
//!
//! The edge cluster only knows the impersonated user; what KubeHub allows is decided here. So
//! the hub reads the two self reviews itself (their bodies, at most [`MAX_BODY`]; JSON, or
//! Kubernetes protobuf as kubectl sends them: [`kubehub_kapi::review`]):
//!
//! * `SelfSubjectAccessReview`: the attributes asked about (`spec.resourceAttributes` or
//!   `spec.nonResourceAttributes`) go through the same [`Index::authorize`] as a request on
//!   the cluster. If KubeHub would deny, the hub answers at once (201, `status.allowed: false`,
//!   the reason starting with `KubeHub:`); if it would allow, the review is forwarded to the
//!   edge, whose RBAC has the last word (a protobuf body is forwarded as its JSON equivalent,
//!   which every API server reads). Except for the agent's plugins (API group
//!   `plugins.kubehub.io`), which only KubeHub authorizes: its yes is answered too.
//! * `SelfSubjectRulesReview`: answered by the hub from [`Index::rules`] for
//!   `spec.namespace` (`kubectl auth can-i --list`).
//!
//! Who may create them is the authorize phase's business (anyone with a grant covering the
//! cluster).

use bytes::Bytes;
use kubehub_access::{Attributes, Decision, Identity, Index, Rule};
use kubehub_kapi::request_info::{RequestInfo, Verb};
use kubehub_kapi::review::{self as kreview, AccessReview};
use serde_json::{json, Map, Value};

use super::error::ProxyError;

/// The largest review body the hub reads (larger: 413).
pub const MAX_BODY: usize = 64 * 1024;

/// A review the hub reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Review {
    /// `selfsubjectaccessreviews`: may I do this?
    Access,
    /// `selfsubjectrulesreviews`: what may I do in this namespace?
    Rules,
}

impl Review {
    /// The review a request creates, if it creates one.
    pub fn of(info: &RequestInfo<'_>) -> Option<Review> {
        if !info.is_resource_request
            || info.verb != Verb::Create
            || info.api_group != "authorization.k8s.io"
            || !info.subresource.is_empty()
            || !info.name.is_empty()
            || !info.namespace.is_empty()
        {
            return None;
        }
        match info.resource {
            "selfsubjectaccessreviews" => Some(Review::Access),
            "selfsubjectrulesreviews" => Some(Review::Rules),
            _ => None,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Review::Access => "SelfSubjectAccessReview",
            Review::Rules => "SelfSubjectRulesReview",
        }
    }
}

/// What the hub does with a review.
#[derive(Debug)]
pub enum Verdict {
    /// Answers it itself: 201 with this JSON body.
    Answer(Bytes),
    /// Forwards it to the edge with this body; `json`: the body was re-encoded as JSON (the
    /// forwarded content type and length change with it).
    Forward {
        /// The body to forward.
        body: Bytes,
        /// Re-encoded as JSON.
        json: bool,
    },
}

/// Reads a review and decides what to do with it (see the module documentation).
pub fn decide(
    index: &Index,
    id: &Identity,
    cluster: &str,
    review: Review,
    content_type: Option<&[u8]>,
    body: Bytes,
) -> Result<Verdict, ProxyError> {
    let content_type = content_type
        .and_then(|c| std::str::from_utf8(c).ok())
        .unwrap_or("");
    let parsed = kreview::parse(review.kind(), content_type, &body)
        .map_err(|s| ProxyError::Invalid(Box::new(s)))?;
    let asked = match parsed {
        kreview::Review::Rules { namespace } => {
            let rules = index.rules(id, cluster, &namespace);
            let (resource, non_resource) = rules_json(&rules);
            let answer = kreview::rules_answer(&namespace, resource, non_resource);
            return Ok(Verdict::Answer(Bytes::from(answer.to_string())));
        }
        kreview::Review::Access(a) => a,
    };
    match index.authorize(id, cluster, &attributes(&asked)) {
        // The agent's plugins are KubeHub's alone (the edge API server knows nothing of them):
        // its yes is the answer.
        Decision::Allow if asked.is_resource && asked.group == kubehub_kapi::plugin::API_GROUP => {
            let answer = kreview::access_answer(&asked, true, "KubeHub: allowed by a grant");
            Ok(Verdict::Answer(Bytes::from(answer.to_string())))
        }
        // Always forwarded as the JSON of what the hub read and decided on, never the bytes
        // as sent: a JSON body with repeated keys could read differently at the edge (Go's
        // decoder merges them) and ask it another question; a protobuf body the edge may not
        // take.
        Decision::Allow => {
            let mut v = kreview::access_answer(&asked, true, "");
            if let Some(o) = v.as_object_mut() {
                o.remove("status");
            }
            Ok(Verdict::Forward {
                body: Bytes::from(v.to_string()),
                json: true,
            })
        }
        Decision::Deny(reason) => {
            let answer = kreview::access_answer(&asked, false, &format!("KubeHub: {reason}"));
            Ok(Verdict::Answer(Bytes::from(answer.to_string())))
        }
    }
}

/// What a review asks, as the index reads a request.
fn attributes(a: &AccessReview) -> Attributes<'_> {
    if a.is_resource {
        Attributes {
            verb: &a.verb,
            api_group: &a.group,
            resource: &a.resource,
            subresource: &a.subresource,
            namespace: &a.namespace,
            name: &a.name,
            path: "",
            is_resource_request: true,
        }
    } else {
        Attributes {
            verb: &a.verb,
            path: &a.path,
            ..Attributes::default()
        }
    }
}

/// Rules in the API's shape: (`resourceRules`, `nonResourceRules`).
fn rules_json(rules: &[Rule]) -> (Value, Value) {
    let (resource, non_resource): (Vec<&Rule>, Vec<&Rule>) =
        rules.iter().partition(|r| !r.is_non_resource());
    let resource: Vec<Value> = resource
        .iter()
        .map(|r| {
            let mut m = Map::new();
            m.insert("verbs".into(), json!(r.verbs));
            if !r.api_groups.is_empty() {
                m.insert("apiGroups".into(), json!(r.api_groups));
            }
            if !r.resources.is_empty() {
                m.insert("resources".into(), json!(r.resources));
            }
            if !r.resource_names.is_empty() {
                m.insert("resourceNames".into(), json!(r.resource_names));
            }
            Value::Object(m)
        })
        .collect();
    let non_resource: Vec<Value> = non_resource
        .iter()
        .map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}))
        .collect();
    (Value::Array(resource), Value::Array(non_resource))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubehub_kapi::request_info::request_info;

    /// What kubectl 1.32 sends for `kubectl auth can-i get pods -n default` (captured).
    const CAN_I_GET_PODS: &[u8] = b"k8s\x00\n2\n\x17authorization.k8s.io/v1\x12\x17SelfSubjectAccessReview\x12<\n\x10\n\x00\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x12\x1e\n\x1c\n\x07default\x12\x03get\x1a\x00\"\x00*\x04pods2\x00:\x00\x1a\x08\x08\x00\x12\x00\x1a\x00 \x00\x1a\x00\"\x00";
    /// And for `kubectl auth can-i --list -n default`.
    const CAN_I_LIST: &[u8] = b"k8s\x00\n1\n\x17authorization.k8s.io/v1\x12\x16SelfSubjectRulesReview\x12#\n\x10\n\x00\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x12\t\n\x07default\x1a\x04\x18\x00\"\x00\x1a\x00\"\x00";
    const PROTOBUF: Option<&[u8]> = Some(b"application/vnd.kubernetes.protobuf");

    #[test]
    fn reviews_are_recognised() {
        let of = |m, p| Review::of(&request_info(m, p, "").unwrap());
        let ssar = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
        assert_eq!(of("POST", ssar), Some(Review::Access));
        assert_eq!(
            of(
                "POST",
                "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews"
            ),
            Some(Review::Rules)
        );
        assert_eq!(of("GET", ssar), None);
        assert_eq!(
            of("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews"),
            None,
            "reviews about others are ordinary requests"
        );
        assert_eq!(
            of(
                "POST",
                "/apis/authorization.k8s.io/v1/namespaces/x/localsubjectaccessreviews"
            ),
            None
        );
    }

    /// alice (of acme) granted `rule` on edge-1 by the grant `name`: the index and her identity.
    fn alice_granted(name: &str, rule: Rule) -> (Index, std::sync::Arc<Identity>) {
        use kubehub_access::build::{cluster, grant, mint, snapshot, tenant, user};
        let (token, token_record) = mint("alice", "acme", &["edge-1"], 0);
        let index = Index::new();
        let records = vec![
            tenant("acme"),
            user("alice", "acme", &[]),
            cluster("edge-1", "acme"),
            grant(name, "acme", "alice", &["edge-1"], vec![rule]),
            token_record,
        ];
        index.apply(&snapshot(1, records)).unwrap();
        let who = index
            .authenticate(Some(format!("Bearer {token}").as_bytes()), 2)
            .unwrap();
        (index, who)
    }

    /// alice may list pods in `default` on edge-1.
    fn index() -> (Index, std::sync::Arc<Identity>) {
        use kubehub_access::build::rule;
        alice_granted("pods", rule(&[""], &["pods"], &["list"], &["default"], &[]))
    }

    #[test]
    fn reviews_of_plugins_are_answered_by_the_hub() {
        use kubehub_access::build::rule;
        let (index, alice) = alice_granted(
            "uptime",
            rule(
                &["plugins.kubehub.io"],
                &["native"],
                &["create"],
                &[],
                &["uptime"],
            ),
        );
        let ask = |name: &str| {
            let body = format!(
                r#"{{"spec":{{"resourceAttributes":{{"verb":"create","group":"plugins.kubehub.io","resource":"native","name":"{name}"}}}}}}"#
            );
            match decide(
                &index,
                &alice,
                "edge-1",
                Review::Access,
                Some(b"application/json"),
                Bytes::from(body),
            )
            .unwrap()
            {
                Verdict::Answer(a) => {
                    serde_json::from_slice::<Value>(&a).unwrap()["status"]["allowed"].clone()
                }
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(ask("uptime"), true);
        assert_eq!(ask("reboot"), false);
    }

    #[test]
    fn kubectls_reviews_get_kubehubs_answers() {
        let (index, alice) = index();
        let decide = |review, ct, body: &[u8]| {
            decide(
                &index,
                &alice,
                "edge-1",
                review,
                ct,
                Bytes::copy_from_slice(body),
            )
            .unwrap()
        };
        // get pods: not granted (list is): the hub says no itself.
        let Verdict::Answer(no) = decide(Review::Access, PROTOBUF, CAN_I_GET_PODS) else {
            panic!("a KubeHub no is answered by the hub")
        };
        let v: Value = serde_json::from_slice(&no).unwrap();
        assert_eq!(v["status"]["allowed"], false);
        assert!(v["status"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("KubeHub: "));
        assert_eq!(v["spec"]["resourceAttributes"]["resource"], "pods");
        // list pods in default: forwarded, as JSON when it came as protobuf.
        let list = br#"{"kind":"SelfSubjectAccessReview","spec":{"resourceAttributes":{"verb":"list","resource":"pods","namespace":"default"}}}"#;
        match decide(Review::Access, Some(b"application/json"), list) {
            Verdict::Forward { body, json: true } => {
                let v: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["spec"]["resourceAttributes"]["verb"], "list");
            }
            other => panic!("{other:?}"),
        }
        // A JSON body repeating a key: the edge is asked exactly what the hub decided on
        // (Go's decoder would merge the two resourceAttributes into get pods/exec).
        let twice = br#"{"spec":{"resourceAttributes":{"subresource":"exec"},"resourceAttributes":{"verb":"list","resource":"pods","namespace":"default"}}}"#;
        match decide(Review::Access, Some(b"application/json"), twice) {
            Verdict::Forward { body, .. } => {
                let v: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["spec"]["resourceAttributes"]["subresource"], "");
                assert_eq!(v["spec"]["resourceAttributes"]["verb"], "list");
            }
            other => panic!("{other:?}"),
        }
        let pb = CAN_I_GET_PODS
            .windows(3)
            .position(|w| w == b"get")
            .map(|i| {
                [
                    &CAN_I_GET_PODS[..i - 1],
                    b"\x04list",
                    &CAN_I_GET_PODS[i + 3..],
                ]
                .concat()
            })
            .unwrap();
        // (Lengths of the enclosing messages change with the verb: fix them up.)
        let pb = fix_lengths(&pb);
        match decide(Review::Access, PROTOBUF, &pb) {
            Verdict::Forward { body, json: true } => {
                let v: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["spec"]["resourceAttributes"]["verb"], "list");
                assert!(v.get("status").is_none());
            }
            other => panic!("{other:?}"),
        }
        // --list: the rules for the namespace, from the index.
        let Verdict::Answer(rules) = decide(Review::Rules, PROTOBUF, CAN_I_LIST) else {
            panic!("rules are the hub's")
        };
        let v: Value = serde_json::from_slice(&rules).unwrap();
        assert_eq!(
            v["status"]["resourceRules"][0],
            json!({"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]})
        );
        assert_eq!(v["status"]["nonResourceRules"][0]["verbs"], json!(["get"]));
        // Unreadable: kube-apiserver's errors.
        let e = super::decide(
            &index,
            &alice,
            "edge-1",
            Review::Access,
            PROTOBUF,
            Bytes::from_static(b"k8s"),
        )
        .unwrap_err();
        assert_eq!(
            e.status(super::super::error::Reached::Hub).unwrap().code,
            400
        );
    }

    /// The captured review with its verb changed from `get` to `list`: the three enclosing
    /// length prefixes grow by one.
    fn fix_lengths(pb: &[u8]) -> Vec<u8> {
        let mut v = pb.to_vec();
        // Offsets of the length bytes in the capture: envelope raw (field 2 of Unknown),
        // spec (field 2 of the review), resourceAttributes (field 1 of the spec).
        for marker in [&b"\x12<"[..], &b"\x12\x1e"[..], &b"\n\x1c"[..]] {
            let i = v.windows(2).position(|w| w == marker).unwrap();
            v[i + 1] += 1;
        }
        v
    }
}
