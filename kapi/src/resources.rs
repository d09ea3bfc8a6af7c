//! Resource types: the built-in ones the simulator serves, the discovery documents built from
//! any list of them, and the field selectors each supports.
//!
//! The currency is [`kubehub_wire::ResourceType`], the same struct the agent reports in its
//! DISCOVERY frame, so the hub can serve discovery from an agent's report with this code.

use std::sync::OnceLock;

use kubehub_wire::{ResourceType, Verbs};
use serde_json::{json, Value};

const ALL: Verbs = Verbs::KNOWN;

fn verbs(list: &[Verbs]) -> Verbs {
    Verbs(list.iter().fold(0, |acc, v| acc | v.0))
}

#[allow(clippy::too_many_arguments)]
fn rt(
    group: &str,
    resource: &str,
    kind: &str,
    singular: &str,
    namespaced: bool,
    verbs: Verbs,
    short_names: &[&str],
    categories: &[&str],
) -> ResourceType {
    ResourceType {
        group: group.into(),
        version: "v1".into(),
        resource: resource.into(),
        kind: kind.into(),
        singular: singular.into(),
        namespaced,
        cached: !resource.contains('/') && verbs.contains(Verbs(Verbs::LIST.0 | Verbs::WATCH.0)),
        verbs,
        short_names: short_names.iter().map(|s| s.to_string()).collect(),
        categories: categories.iter().map(|s| s.to_string()).collect(),
    }
}

/// The resource types the simulator serves: core/v1 and apps/v1 kinds, with the subresources
/// kubectl uses.
pub fn builtin() -> &'static [ResourceType] {
    static TYPES: OnceLock<Vec<ResourceType>> = OnceLock::new();
    TYPES.get_or_init(|| {
        let no_dc = Verbs(ALL.0 & !Verbs::DELETE_COLLECTION.0);
        let get = Verbs::GET;
        let gpu = verbs(&[Verbs::GET, Verbs::PATCH, Verbs::UPDATE]);
        vec![
            rt(
                "",
                "namespaces",
                "Namespace",
                "namespace",
                false,
                no_dc,
                &["ns"],
                &[],
            ),
            rt(
                "",
                "namespaces/status",
                "Namespace",
                "",
                false,
                gpu,
                &[],
                &[],
            ),
            rt("", "nodes", "Node", "node", false, ALL, &["no"], &[]),
            rt("", "nodes/status", "Node", "", false, gpu, &[], &[]),
            rt("", "pods", "Pod", "pod", true, ALL, &["po"], &["all"]),
            rt("", "pods/log", "Pod", "", true, get, &[], &[]),
            rt("", "pods/status", "Pod", "", true, gpu, &[], &[]),
            rt(
                "",
                "services",
                "Service",
                "service",
                true,
                ALL,
                &["svc"],
                &["all"],
            ),
            rt(
                "",
                "endpoints",
                "Endpoints",
                "endpoints",
                true,
                ALL,
                &["ep"],
                &[],
            ),
            rt(
                "",
                "configmaps",
                "ConfigMap",
                "configmap",
                true,
                ALL,
                &["cm"],
                &[],
            ),
            rt("", "secrets", "Secret", "secret", true, ALL, &[], &[]),
            rt(
                "",
                "serviceaccounts",
                "ServiceAccount",
                "serviceaccount",
                true,
                ALL,
                &["sa"],
                &[],
            ),
            rt("", "events", "Event", "event", true, ALL, &["ev"], &[]),
            rt(
                "apps",
                "deployments",
                "Deployment",
                "deployment",
                true,
                ALL,
                &["deploy"],
                &["all"],
            ),
            rt(
                "apps",
                "deployments/scale",
                "Scale",
                "",
                true,
                gpu,
                &[],
                &[],
            ),
            rt(
                "apps",
                "deployments/status",
                "Deployment",
                "",
                true,
                gpu,
                &[],
                &[],
            ),
            rt(
                "apps",
                "replicasets",
                "ReplicaSet",
                "replicaset",
                true,
                ALL,
                &["rs"],
                &["all"],
            ),
            rt(
                "apps",
                "replicasets/scale",
                "Scale",
                "",
                true,
                gpu,
                &[],
                &[],
            ),
            rt(
                "apps",
                "replicasets/status",
                "ReplicaSet",
                "",
                true,
                gpu,
                &[],
                &[],
            ),
            rt(
                "apps",
                "daemonsets",
                "DaemonSet",
                "daemonset",
                true,
                ALL,
                &["ds"],
                &["all"],
            ),
            rt(
                "apps",
                "daemonsets/status",
                "DaemonSet",
                "",
                true,
                gpu,
                &[],
                &[],
            ),
            rt(
                "apps",
                "statefulsets",
                "StatefulSet",
                "statefulset",
                true,
                ALL,
                &["sts"],
                &["all"],
            ),
            rt(
                "apps",
                "statefulsets/scale",
                "Scale",
                "",
                true,
                gpu,
                &[],
                &[],
            ),
            rt(
                "apps",
                "statefulsets/status",
                "StatefulSet",
                "",
                true,
                gpu,
                &[],
                &[],
            ),
            // The same events as the events.k8s.io API shows them (the simulator stores both).
            rt(
                "events.k8s.io",
                "events",
                "Event",
                "event",
                true,
                ALL,
                &["ev"],
                &[],
            ),
            // `kubectl auth can-i` asks these (create only, never stored).
            rt(
                "authorization.k8s.io",
                "selfsubjectaccessreviews",
                "SelfSubjectAccessReview",
                "",
                false,
                Verbs::CREATE,
                &[],
                &[],
            ),
            rt(
                "authorization.k8s.io",
                "selfsubjectrulesreviews",
                "SelfSubjectRulesReview",
                "",
                false,
                Verbs::CREATE,
                &[],
                &[],
            ),
        ]
    })
}

/// Looks a type up by group, version and plural resource name (subresources as `pods/log`).
pub fn find<'a>(
    types: &'a [ResourceType],
    group: &str,
    version: &str,
    resource: &str,
) -> Option<&'a ResourceType> {
    types
        .iter()
        .find(|t| t.group == group && t.version == version && t.resource == resource)
}

/// `v1` or `apps/v1`.
pub fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

/// `/api/v1` or `/apis/apps/v1`.
pub fn group_version_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    }
}

/// The `APIResourceList` of one group version.
pub fn api_resource_list(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = types
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .map(|t| {
            let mut r = json!({
                "name": t.resource,
                "singularName": t.singular,
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": t.verbs.names().collect::<Vec<_>>(),
            });
            if !t.short_names.is_empty() {
                r["shortNames"] = json!(t.short_names);
            }
            if !t.categories.is_empty() {
                r["categories"] = json!(t.categories);
            }
            if t.kind == "Scale" {
                r["group"] = json!("autoscaling");
                r["version"] = json!("v1");
            }
            r
        })
        .collect();
    if resources.is_empty() {
        return None;
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": api_version(group, version),
        "resources": resources,
    }))
}

/// `/api`: the core group's versions.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// The named groups of `types`, each with its versions (first = preferred).
pub fn groups(types: &[ResourceType]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for t in types.iter().filter(|t| !t.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, versions)) => {
                if !versions.contains(&t.version) {
                    versions.push(t.version.clone());
                }
            }
            None => out.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    out
}

fn api_group_json(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": api_version(group, v), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

/// `/apis`: the `APIGroupList`.
pub fn api_group_list(types: &[ResourceType]) -> Value {
    let groups: Vec<Value> = groups(types)
        .iter()
        .map(|(g, vs)| api_group_json(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/{group}`: one `APIGroup`, if the group exists.
pub fn api_group(types: &[ResourceType], group: &str) -> Option<Value> {
    let (g, vs) = groups(types).into_iter().find(|(g, _)| g == group)?;
    let mut v = api_group_json(&g, &vs);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    Some(v)
}

/// The field selectors a resource supports (beyond `metadata.name` and `metadata.namespace`,
/// which every resource supports), as kube-apiserver registers them.
pub fn field_selectors(group: &str, resource: &str) -> &'static [&'static str] {
    const META: &[&str] = &["metadata.name", "metadata.namespace"];
    match (group, resource) {
        ("", "pods") => &[
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "events") => &[
            "metadata.name",
            "metadata.namespace",
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("events.k8s.io", "events") => &[
            "metadata.name",
            "metadata.namespace",
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "regarding.resourceVersion",
            "regarding.fieldPath",
            "reason",
            "reportingController",
            "type",
        ],
        ("", "secrets") => &["metadata.name", "metadata.namespace", "type"],
        ("", "namespaces") => &["metadata.name", "metadata.namespace", "status.phase"],
        ("", "nodes") => &["metadata.name", "metadata.namespace", "spec.unschedulable"],
        ("apps", "replicasets") => &["metadata.name", "metadata.namespace", "status.replicas"],
        _ => META,
    }
}

/// The value of a field-selector field of an object, as a string (`None` if absent).
pub fn field_value(obj: &Value, field: &str) -> Option<String> {
    let mut v = obj;
    for part in field.split('.') {
        v = v.get(part)?;
    }
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        // `source` of an Event is an object; kube-apiserver selects on its component.
        Value::Object(o) => o
            .get("component")
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    }
}

/// A discovery document that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("discovery document: {0}")]
pub struct DiscoveryError(pub String);

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Splits a `groupVersion` (`apps/v1`, or `v1` for the core group) into group and version.
pub fn split_group_version(gv: &str) -> (&str, &str) {
    gv.split_once('/').unwrap_or(("", gv))
}

/// Reads `/api` (`APIVersions`): the core group's versions.
pub fn parse_api_versions(doc: &Value) -> Result<Vec<String>, DiscoveryError> {
    let versions = strings(&doc["versions"]);
    if versions.is_empty() {
        return Err(DiscoveryError("APIVersions without versions".into()));
    }
    Ok(versions)
}

/// Reads `/apis` (`APIGroupList`): each named group with its versions, the preferred first.
pub fn parse_api_group_list(doc: &Value) -> Result<Vec<(String, Vec<String>)>, DiscoveryError> {
    let groups = doc["groups"]
        .as_array()
        .ok_or_else(|| DiscoveryError("APIGroupList without groups".into()))?;
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        let Some(name) = g["name"].as_str().filter(|n| !n.is_empty()) else {
            continue;
        };
        let preferred = g["preferredVersion"]["version"].as_str();
        let mut versions: Vec<String> = g["versions"]
            .as_array()
            .map(|vs| {
                vs.iter()
                    .filter_map(|v| v["version"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(p) = preferred {
            if let Some(i) = versions.iter().position(|v| v == p) {
                let v = versions.remove(i);
                versions.insert(0, v);
            }
        }
        if !versions.is_empty() {
            out.push((name.to_owned(), versions));
        }
    }
    Ok(out)
}

/// Reads an `APIResourceList` (`/api/v1`, `/apis/{group}/{version}`) into resource types, as
/// the agent reports them. Subresources (`pods/log`) are kept; verbs outside the eight the
/// protocol carries are dropped; entries without a name or kind are skipped. `cached` is
/// false: whether a type is cached is the hub's decision, not the API server's.
pub fn parse_api_resource_list(doc: &Value) -> Result<Vec<ResourceType>, DiscoveryError> {
    let gv = doc["groupVersion"]
        .as_str()
        .ok_or_else(|| DiscoveryError("APIResourceList without groupVersion".into()))?;
    let (group, version) = split_group_version(gv);
    let resources = doc["resources"]
        .as_array()
        .ok_or_else(|| DiscoveryError(format!("APIResourceList {gv} without resources")))?;
    let mut out = Vec::with_capacity(resources.len());
    for r in resources {
        let (Some(name), Some(kind)) = (r["name"].as_str(), r["kind"].as_str()) else {
            continue;
        };
        if name.is_empty() || kind.is_empty() {
            continue;
        }
        let verbs = Verbs(strings(&r["verbs"]).iter().fold(0, |acc, v| {
            acc | Verbs::NAMES
                .iter()
                .position(|n| n == v)
                .map_or(0, |i| 1 << i)
        }));
        out.push(ResourceType {
            group: group.to_owned(),
            version: version.to_owned(),
            resource: name.to_owned(),
            kind: kind.to_owned(),
            singular: r["singularName"].as_str().unwrap_or_default().to_owned(),
            namespaced: r["namespaced"].as_bool().unwrap_or(false),
            cached: false,
            verbs,
            short_names: strings(&r["shortNames"]),
            categories: strings(&r["categories"]),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod discovery_tests {
    use super::*;

    #[test]
    fn discovery_documents_read_back_into_the_types_they_were_made_from() {
        let types = builtin();
        assert_eq!(
            parse_api_versions(&api_versions("127.0.0.1:6443")).unwrap(),
            ["v1"]
        );
        let groups = parse_api_group_list(&api_group_list(types)).unwrap();
        assert_eq!(groups, super::groups(types));
        let mut back = Vec::new();
        for (g, versions) in std::iter::once((String::new(), vec!["v1".to_owned()])).chain(groups) {
            for v in versions {
                let doc = api_resource_list(types, &g, &v).unwrap();
                back.extend(parse_api_resource_list(&doc).unwrap());
            }
        }
        assert_eq!(back.len(), types.len());
        for (got, want) in back.iter().zip(types) {
            let want = ResourceType {
                cached: false,
                ..want.clone()
            };
            assert_eq!(got, &want);
        }
    }

    #[test]
    fn real_world_shapes_and_junk() {
        let doc = serde_json::json!({
            "kind": "APIGroupList",
            "groups": [
                {"name": "autoscaling", "versions": [{"groupVersion": "autoscaling/v1", "version": "v1"}, {"groupVersion": "autoscaling/v2", "version": "v2"}],
                 "preferredVersion": {"groupVersion": "autoscaling/v2", "version": "v2"}},
                {"name": "", "versions": [{"version": "v1"}]},
                {"name": "empty", "versions": []}
            ]
        });
        assert_eq!(
            parse_api_group_list(&doc).unwrap(),
            [(
                "autoscaling".to_owned(),
                vec!["v2".to_owned(), "v1".to_owned()]
            )],
            "preferred version first; nameless and versionless groups skipped"
        );
        let doc = serde_json::json!({
            "groupVersion": "batch/v1",
            "resources": [
                {"name": "jobs", "singularName": "job", "namespaced": true, "kind": "Job",
                 "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch", "escalate"],
                 "categories": ["all"]},
                {"name": "jobs/status", "singularName": "", "namespaced": true, "kind": "Job", "verbs": ["get", "patch", "update"]},
                {"name": "nameless"}
            ]
        });
        let types = parse_api_resource_list(&doc).unwrap();
        assert_eq!(types.len(), 2);
        assert_eq!(
            (types[0].group.as_str(), types[0].version.as_str()),
            ("batch", "v1")
        );
        assert_eq!(types[0].verbs, Verbs::KNOWN, "unknown verbs dropped");
        assert_eq!(types[1].resource, "jobs/status");
        assert!(parse_api_resource_list(&serde_json::json!({"resources": []})).is_err());
        assert!(parse_api_group_list(&serde_json::json!({})).is_err());
        assert!(parse_api_versions(&serde_json::json!({"versions": []})).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_documents() {
        let types = builtin();
        let core = api_resource_list(types, "", "v1").unwrap();
        assert_eq!(core["groupVersion"], "v1");
        let pods = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods")
            .unwrap();
        assert_eq!(pods["kind"], "Pod");
        assert_eq!(pods["namespaced"], true);
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(
            pods["verbs"],
            json!([
                "get",
                "list",
                "watch",
                "create",
                "update",
                "patch",
                "delete",
                "deletecollection"
            ])
        );
        let apps = api_group_list(types);
        assert_eq!(apps["groups"][0]["name"], "apps");
        assert_eq!(
            apps["groups"][0]["preferredVersion"]["groupVersion"],
            "apps/v1"
        );
        assert!(api_resource_list(types, "batch", "v1").is_none());
        assert!(api_group(types, "apps").is_some());
        assert!(find(types, "apps", "v1", "deployments").unwrap().cached);
        assert!(!find(types, "", "v1", "pods/log").unwrap().cached);
    }

    #[test]
    fn field_values() {
        let pod =
            json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "hostNetwork": true}});
        assert_eq!(field_value(&pod, "spec.nodeName").as_deref(), Some("n1"));
        assert_eq!(
            field_value(&pod, "spec.hostNetwork").as_deref(),
            Some("true")
        );
        assert_eq!(field_value(&pod, "status.phase"), None);
    }
}
