//! Server-side printing: `meta.k8s.io` Tables with the columns kube-apiserver prints.
//!
//! `kubectl get` asks for a Table and prints its cells; without one it can show only NAME and
//! AGE. The column sets follow kube-apiserver's printers for each built-in kind (priority 1 are
//! the `-o wide` columns); other kinds get NAME and AGE.

use std::time::SystemTime;

use serde_json::{json, Map, Value};

use crate::query::IncludeObject;
use crate::time::{age, parse_rfc3339};

/// One column definition.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Header, e.g. `Name` (kubectl upper-cases it).
    pub name: &'static str,
    /// `string`, `integer`, `date` …
    pub ty: &'static str,
    /// `name` for the name column, else empty.
    pub format: &'static str,
    /// 0 always shown, 1 with `-o wide`.
    pub priority: u8,
    /// What the column shows.
    pub description: &'static str,
}

const fn col(
    name: &'static str,
    ty: &'static str,
    priority: u8,
    description: &'static str,
) -> Column {
    Column {
        name,
        ty,
        format: "",
        priority,
        description,
    }
}

const NAME: Column = Column {
    name: "Name",
    ty: "string",
    format: "name",
    priority: 0,
    description: "Name must be unique within a namespace.",
};
const AGE: Column = col(
    "Age",
    "string",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

/// The columns of a resource's Table.
pub fn columns(group: &str, resource: &str) -> Vec<Column> {
    let workload_wide = [
        col(
            "Containers",
            "string",
            1,
            "Names of each container in the template.",
        ),
        col(
            "Images",
            "string",
            1,
            "Images referenced by each container in the template.",
        ),
        col("Selector", "string", 1, "Label selector for pods."),
    ];
    let mut c = match (group, resource) {
        ("", "pods") => vec![
            NAME,
            col("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
            col("Status", "string", 0, "The aggregate status of the containers in this pod."),
            col("Restarts", "string", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            AGE,
            col("IP", "string", 1, "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
            col("Node", "string", 1, "NodeName is a request to schedule this pod onto a specific node."),
            col("Nominated Node", "string", 1, "nominatedNodeName is set when this pod preempts other pods on the node."),
            col("Readiness Gates", "string", 1, "If specified, all readiness gates will be evaluated for pod readiness."),
        ],
        ("", "namespaces") => vec![NAME, col("Status", "string", 0, "The status of the namespace"), AGE],
        ("", "nodes") => vec![
            NAME,
            col("Status", "string", 0, "The status of the node"),
            col("Roles", "string", 0, "The roles of the node"),
            AGE,
            col("Version", "string", 0, "Kubelet Version reported by the node."),
            col("Internal-IP", "string", 1, "List of addresses reachable to the node. Queried from cloud provider, if available."),
            col("External-IP", "string", 1, "List of addresses reachable to the node. Queried from cloud provider, if available."),
            col("OS-Image", "string", 1, "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
            col("Kernel-Version", "string", 1, "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
            col("Container-Runtime", "string", 1, "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
        ],
        ("", "services") => vec![
            NAME,
            col("Type", "string", 0, "type determines how the Service is exposed."),
            col("Cluster-IP", "string", 0, "clusterIP is the IP address of the service."),
            col("External-IP", "string", 0, "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
            col("Port(s)", "string", 0, "The list of ports that are exposed by this service."),
            AGE,
            col("Selector", "string", 1, "Route service traffic to pods with label keys and values matching this selector."),
        ],
        ("", "endpoints") => vec![NAME, col("Endpoints", "string", 0, "Endpoints of the service"), AGE],
        ("", "configmaps") => vec![NAME, col("Data", "integer", 0, "Number of entries in the data."), AGE],
        ("", "secrets") => vec![
            NAME,
            col("Type", "string", 0, "The type of the secret"),
            col("Data", "integer", 0, "The total number of data and stringData keys in the secret."),
            AGE,
        ],
        ("", "serviceaccounts") => vec![NAME, col("Secrets", "integer", 0, "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use."), AGE],
        ("", "events") => vec![
            col("Last Seen", "string", 0, "Time when this Event was last observed."),
            col("Type", "string", 0, "Type of this event (Normal, Warning), new types could be added in the future"),
            col("Reason", "string", 0, "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
            col("Object", "string", 0, "The object that this event is about."),
            col("Subobject", "string", 1, "An optional field that identifies the subobject."),
            col("Source", "string", 1, "The component reporting this event."),
            col("Message", "string", 0, "A human-readable description of the status of this operation."),
            col("First Seen", "string", 1, "The time at which the event was first recorded."),
            col("Count", "string", 1, "The number of times this event has occurred."),
            Column { priority: 1, ..NAME },
        ],
        ("apps", "deployments") => {
            let mut v = vec![
                NAME,
                col("Ready", "string", 0, "Number of the pod with ready state"),
                col("Up-to-date", "string", 0, "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
                col("Available", "string", 0, "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
                AGE,
            ];
            v.extend(workload_wide);
            v
        }
        ("apps", "replicasets") => {
            let mut v = vec![
                NAME,
                col("Desired", "integer", 0, "Replicas is the number of desired replicas."),
                col("Current", "integer", 0, "Replicas is the most recently observed number of replicas."),
                col("Ready", "integer", 0, "The number of ready replicas for this replica set."),
                AGE,
            ];
            v.extend(workload_wide);
            v
        }
        ("apps", "daemonsets") => {
            let mut v = vec![
                NAME,
                col("Desired", "integer", 0, "The total number of nodes that should be running the daemon pod."),
                col("Current", "integer", 0, "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
                col("Ready", "integer", 0, "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready."),
                col("Up-to-date", "integer", 0, "The total number of nodes that are running updated daemon pod"),
                col("Available", "integer", 0, "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available."),
                col("Node Selector", "string", 0, "NodeSelector is a selector which must be true for the pod to fit on a node."),
                AGE,
            ];
            v.extend(workload_wide);
            v
        }
        ("apps", "statefulsets") => vec![
            NAME,
            col("Ready", "string", 0, "Number of the pod with ready state"),
            AGE,
            workload_wide[0],
            workload_wide[1],
        ],
        _ => vec![NAME, AGE],
    };
    c.shrink_to_fit();
    c
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut v = v;
    for p in path {
        v = v.get(*p)?;
    }
    Some(v)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    s(v, path).and_then(Value::as_str).unwrap_or("")
}

fn int_at(v: &Value, path: &[&str]) -> i64 {
    s(v, path).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(v: &str) -> String {
    if v.is_empty() {
        "<none>".into()
    } else {
        v.to_owned()
    }
}

fn age_of(obj: &Value, path: &[&str], now: SystemTime) -> String {
    parse_rfc3339(str_at(obj, path))
        .map(|t| age(t, now))
        .unwrap_or_else(|| "<unknown>".into())
}

fn list_join(items: Option<&Value>, f: impl Fn(&Value) -> String) -> String {
    let v: Vec<String> = items
        .and_then(Value::as_array)
        .map(|a| a.iter().map(f).collect())
        .unwrap_or_default();
    if v.is_empty() {
        "<none>".into()
    } else {
        v.join(",")
    }
}

fn selector_string(sel: Option<&Value>) -> String {
    let map = sel
        .and_then(|s| s.get("matchLabels").or(Some(s)))
        .and_then(Value::as_object);
    match map {
        Some(m) if !m.is_empty() => m
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(","),
        _ => "<none>".into(),
    }
}

fn pod_status(pod: &Value) -> String {
    if s(pod, &["metadata", "deletionTimestamp"]).is_some() {
        return "Terminating".into();
    }
    let mut reason = str_at(pod, &["status", "reason"]).to_owned();
    if reason.is_empty() {
        reason = str_at(pod, &["status", "phase"]).to_owned();
    }
    if let Some(statuses) = s(pod, &["status", "containerStatuses"]).and_then(Value::as_array) {
        for c in statuses.iter().rev() {
            let w = str_at(c, &["state", "waiting", "reason"]);
            let t = str_at(c, &["state", "terminated", "reason"]);
            if !w.is_empty() {
                reason = w.to_owned();
            } else if !t.is_empty() {
                reason = t.to_owned();
            }
        }
    }
    if reason.is_empty() {
        "Unknown".into()
    } else {
        reason
    }
}

fn pod_cells(pod: &Value, now: SystemTime) -> Vec<Value> {
    let total = s(pod, &["spec", "containers"])
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let statuses = s(pod, &["status", "containerStatuses"]).and_then(Value::as_array);
    let ready = statuses.map_or(0, |a| {
        a.iter().filter(|c| c["ready"] == json!(true)).count()
    });
    let restarts: i64 =
        statuses.map_or(0, |a| a.iter().map(|c| int_at(c, &["restartCount"])).sum());
    let last_restart = statuses
        .into_iter()
        .flatten()
        .filter_map(|c| parse_rfc3339(str_at(c, &["lastState", "terminated", "finishedAt"])))
        .max();
    let restarts = match last_restart {
        Some(t) if restarts > 0 => format!("{restarts} ({} ago)", age(t, now)),
        _ => restarts.to_string(),
    };
    let gates = s(pod, &["spec", "readinessGates"]).and_then(Value::as_array);
    let gates = match gates {
        Some(g) if !g.is_empty() => {
            let conds = s(pod, &["status", "conditions"]).and_then(Value::as_array);
            let ok = g
                .iter()
                .filter(|gate| {
                    conds.is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == gate["conditionType"] && c["status"] == "True")
                    })
                })
                .count();
            format!("{ok}/{}", g.len())
        }
        _ => "<none>".into(),
    };
    vec![
        json!(str_at(pod, &["metadata", "name"])),
        json!(format!("{ready}/{total}")),
        json!(pod_status(pod)),
        json!(restarts),
        json!(age_of(pod, &["metadata", "creationTimestamp"], now)),
        json!(or_none(str_at(pod, &["status", "podIP"]))),
        json!(or_none(str_at(pod, &["spec", "nodeName"]))),
        json!(or_none(str_at(pod, &["status", "nominatedNodeName"]))),
        json!(gates),
    ]
}

fn node_cells(node: &Value, now: SystemTime) -> Vec<Value> {
    let conds = s(node, &["status", "conditions"]).and_then(Value::as_array);
    let ready = conds
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .map(|c| {
            if c["status"] == "True" {
                "Ready"
            } else {
                "NotReady"
            }
        })
        .unwrap_or("Unknown");
    let mut status = ready.to_owned();
    if s(node, &["spec", "unschedulable"]) == Some(&json!(true)) {
        status.push_str(",SchedulingDisabled");
    }
    let roles: Vec<&str> = s(node, &["metadata", "labels"])
        .and_then(Value::as_object)
        .map(|l| {
            l.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .collect()
        })
        .unwrap_or_default();
    let addr = |ty: &str| {
        s(node, &["status", "addresses"])
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|x| x["type"] == ty))
            .and_then(|x| x["address"].as_str())
            .unwrap_or("<none>")
            .to_owned()
    };
    let info = |k: &str| or_none(str_at(node, &["status", "nodeInfo", k]));
    vec![
        json!(str_at(node, &["metadata", "name"])),
        json!(status),
        json!(if roles.is_empty() {
            "<none>".to_owned()
        } else {
            roles.join(",")
        }),
        json!(age_of(node, &["metadata", "creationTimestamp"], now)),
        json!(info("kubeletVersion")),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

fn service_cells(svc: &Value, now: SystemTime) -> Vec<Value> {
    let ty = str_at(svc, &["spec", "type"]);
    let ty = if ty.is_empty() { "ClusterIP" } else { ty };
    let mut external = list_join(s(svc, &["spec", "externalIPs"]), |v| {
        v.as_str().unwrap_or("").to_owned()
    });
    if ty == "LoadBalancer" && external == "<none>" {
        external = list_join(s(svc, &["status", "loadBalancer", "ingress"]), |i| {
            i["ip"]
                .as_str()
                .or(i["hostname"].as_str())
                .unwrap_or("")
                .to_owned()
        });
        if external == "<none>" {
            external = "<pending>".into();
        }
    }
    let ports = list_join(s(svc, &["spec", "ports"]), |p| {
        let proto = p["protocol"].as_str().unwrap_or("TCP");
        match p["nodePort"].as_i64() {
            Some(np) => format!("{}:{np}/{proto}", p["port"]),
            None => format!("{}/{proto}", p["port"]),
        }
    });
    vec![
        json!(str_at(svc, &["metadata", "name"])),
        json!(ty),
        json!(or_none(str_at(svc, &["spec", "clusterIP"]))),
        json!(external),
        json!(ports),
        json!(age_of(svc, &["metadata", "creationTimestamp"], now)),
        json!(selector_string(s(svc, &["spec", "selector"]))),
    ]
}

fn endpoints_cells(ep: &Value, now: SystemTime) -> Vec<Value> {
    let mut addrs = Vec::new();
    for subset in s(ep, &["subsets"])
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let ports: Vec<i64> = subset["ports"]
            .as_array()
            .map(|p| p.iter().filter_map(|p| p["port"].as_i64()).collect())
            .unwrap_or_default();
        for a in subset["addresses"].as_array().into_iter().flatten() {
            let ip = a["ip"].as_str().unwrap_or("");
            if ports.is_empty() {
                addrs.push(ip.to_owned());
            }
            for p in &ports {
                addrs.push(format!("{ip}:{p}"));
            }
        }
    }
    let shown = if addrs.is_empty() {
        "<none>".to_owned()
    } else if addrs.len() > 3 {
        format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
    } else {
        addrs.join(",")
    };
    vec![
        json!(str_at(ep, &["metadata", "name"])),
        json!(shown),
        json!(age_of(ep, &["metadata", "creationTimestamp"], now)),
    ]
}

fn count(v: Option<&Value>) -> usize {
    v.and_then(Value::as_object).map_or(0, Map::len)
}

fn containers_images(tpl_spec: Option<&Value>) -> (String, String) {
    let cs = tpl_spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array);
    let names = cs.map(|c| {
        c.iter()
            .map(|c| c["name"].as_str().unwrap_or(""))
            .collect::<Vec<_>>()
            .join(",")
    });
    let images = cs.map(|c| {
        c.iter()
            .map(|c| c["image"].as_str().unwrap_or(""))
            .collect::<Vec<_>>()
            .join(",")
    });
    (names.unwrap_or_default(), images.unwrap_or_default())
}

fn workload_cells(group_resource: (&str, &str), o: &Value, now: SystemTime) -> Vec<Value> {
    let name = json!(str_at(o, &["metadata", "name"]));
    let age = json!(age_of(o, &["metadata", "creationTimestamp"], now));
    let tpl = s(o, &["spec", "template", "spec"]);
    let (containers, images) = containers_images(tpl);
    let selector = json!(selector_string(s(o, &["spec", "selector"])));
    let st = |k: &str| int_at(o, &["status", k]);
    let desired = s(o, &["spec", "replicas"])
        .and_then(Value::as_i64)
        .unwrap_or(1);
    match group_resource.1 {
        "deployments" => vec![
            name,
            json!(format!("{}/{}", st("readyReplicas"), desired)),
            json!(st("updatedReplicas")),
            json!(st("availableReplicas")),
            age,
            json!(containers),
            json!(images),
            selector,
        ],
        "replicasets" => vec![
            name,
            json!(desired),
            json!(st("replicas")),
            json!(st("readyReplicas")),
            age,
            json!(containers),
            json!(images),
            selector,
        ],
        "daemonsets" => {
            let node_sel = tpl
                .and_then(|t| t.get("nodeSelector"))
                .map(|ns| selector_string(Some(ns)))
                .unwrap_or_else(|| "<none>".into());
            vec![
                name,
                json!(st("desiredNumberScheduled")),
                json!(st("currentNumberScheduled")),
                json!(st("numberReady")),
                json!(st("updatedNumberScheduled")),
                json!(st("numberAvailable")),
                json!(node_sel),
                age,
                json!(containers),
                json!(images),
                selector,
            ]
        }
        _ => vec![
            name,
            json!(format!("{}/{}", st("readyReplicas"), desired)),
            age,
            json!(containers),
            json!(images),
        ],
    }
}

fn event_cells(ev: &Value, now: SystemTime) -> Vec<Value> {
    let last = ["lastTimestamp", "eventTime", "firstTimestamp"]
        .iter()
        .map(|k| str_at(ev, &[k]))
        .find(|v| !v.is_empty())
        .or(Some(str_at(ev, &["metadata", "creationTimestamp"])))
        .and_then(parse_rfc3339);
    let first = parse_rfc3339(str_at(ev, &["firstTimestamp"])).or(last);
    let object = format!(
        "{}/{}",
        str_at(ev, &["involvedObject", "kind"]).to_ascii_lowercase(),
        str_at(ev, &["involvedObject", "name"])
    );
    let source = {
        let c = str_at(ev, &["source", "component"]);
        let h = str_at(ev, &["source", "host"]);
        let c = if c.is_empty() {
            str_at(ev, &["reportingComponent"])
        } else {
            c
        };
        if h.is_empty() {
            c.to_owned()
        } else {
            format!("{c}, {h}")
        }
    };
    let count = s(ev, &["count"]).and_then(Value::as_i64).unwrap_or(1);
    vec![
        json!(last
            .map(|t| age(t, now))
            .unwrap_or_else(|| "<unknown>".into())),
        json!(str_at(ev, &["type"])),
        json!(str_at(ev, &["reason"])),
        json!(object),
        json!(str_at(ev, &["involvedObject", "fieldPath"])),
        json!(source),
        json!(str_at(ev, &["message"]).trim()),
        json!(first
            .map(|t| age(t, now))
            .unwrap_or_else(|| "<unknown>".into())),
        json!(count.to_string()),
        json!(str_at(ev, &["metadata", "name"])),
    ]
}

/// The cells of one object's row, in [`columns`] order.
pub fn cells(group: &str, resource: &str, obj: &Value, now: SystemTime) -> Vec<Value> {
    let name = || json!(str_at(obj, &["metadata", "name"]));
    let age = || json!(age_of(obj, &["metadata", "creationTimestamp"], now));
    match (group, resource) {
        ("", "pods") => pod_cells(obj, now),
        ("", "nodes") => node_cells(obj, now),
        ("", "services") => service_cells(obj, now),
        ("", "endpoints") => endpoints_cells(obj, now),
        ("", "events") => event_cells(obj, now),
        ("", "namespaces") => {
            let phase = str_at(obj, &["status", "phase"]);
            vec![
                name(),
                json!(if phase.is_empty() { "Active" } else { phase }),
                age(),
            ]
        }
        ("", "configmaps") => vec![
            name(),
            json!(count(obj.get("data")) + count(obj.get("binaryData"))),
            age(),
        ],
        ("", "secrets") => {
            let ty = str_at(obj, &["type"]);
            vec![
                name(),
                json!(if ty.is_empty() { "Opaque" } else { ty }),
                json!(count(obj.get("data")) + count(obj.get("stringData"))),
                age(),
            ]
        }
        ("", "serviceaccounts") => vec![
            name(),
            json!(obj
                .get("secrets")
                .and_then(Value::as_array)
                .map_or(0, Vec::len)),
            age(),
        ],
        ("apps", r @ ("deployments" | "replicasets" | "daemonsets" | "statefulsets")) => {
            workload_cells((group, r), obj, now)
        }
        _ => vec![name(), age()],
    }
}

/// The `PartialObjectMetadata` of an object.
pub fn partial_metadata(obj: &Value, meta_version: &str) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": format!("meta.k8s.io/{meta_version}"),
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// List metadata of a Table or list.
#[derive(Debug, Clone, Default)]
pub struct ListMeta {
    /// `resourceVersion`
    pub resource_version: String,
    /// `continue`
    pub continue_token: Option<String>,
    /// `remainingItemCount`
    pub remaining: Option<u64>,
}

impl ListMeta {
    /// As JSON.
    pub fn to_value(&self) -> Value {
        let mut m = json!({ "resourceVersion": self.resource_version });
        if let Some(c) = &self.continue_token {
            m["continue"] = json!(c);
        }
        if let Some(r) = self.remaining {
            m["remainingItemCount"] = json!(r);
        }
        m
    }
}

/// A Table of `objects`.
pub fn table(
    group: &str,
    resource: &str,
    objects: &[Value],
    meta: &ListMeta,
    include: IncludeObject,
    table_version: &str,
    now: SystemTime,
) -> Value {
    let defs: Vec<Value> = columns(group, resource)
        .iter()
        .map(|c| {
            json!({
                "name": c.name, "type": c.ty, "format": c.format,
                "description": c.description, "priority": c.priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({ "cells": cells(group, resource, o, now) });
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => row["object"] = partial_metadata(o, table_version),
                IncludeObject::Object => row["object"] = o.clone(),
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{table_version}"),
        "metadata": meta.to_value(),
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn pod_row() {
        let pod = json!({
            "metadata": {"name": "web-1", "creationTimestamp": "2023-11-14T22:08:20Z"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2,
                 "lastState": {"terminated": {"finishedAt": "2023-11-14T22:12:20Z"}}},
                {"name": "b", "ready": false, "restartCount": 1,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        });
        let c = cells("", "pods", &pod, now());
        assert_eq!(c.len(), columns("", "pods").len());
        assert_eq!(
            c,
            vec![
                json!("web-1"),
                json!("1/2"),
                json!("CrashLoopBackOff"),
                json!("3 (60s ago)"),
                json!("5m"),
                json!("10.0.0.5"),
                json!("node-1"),
                json!("<none>"),
                json!("<none>"),
            ]
        );
    }

    #[test]
    fn every_builtin_kind_has_as_many_cells_as_columns() {
        let obj = json!({"metadata": {"name": "x", "creationTimestamp": "2023-11-14T22:13:00Z"}});
        for t in crate::resources::builtin() {
            let c = cells(&t.group, &t.resource, &obj, now());
            assert_eq!(
                c.len(),
                columns(&t.group, &t.resource).len(),
                "{}",
                t.resource
            );
        }
    }

    #[test]
    fn table_shape() {
        let obj = json!({"metadata": {"name": "cm", "creationTimestamp": "2023-11-14T22:13:00Z"}, "data": {"a": "1"}});
        let meta = ListMeta {
            resource_version: "7".into(),
            ..ListMeta::default()
        };
        let t = table(
            "",
            "configmaps",
            &[obj],
            &meta,
            IncludeObject::Metadata,
            "v1",
            now(),
        );
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        assert_eq!(t["columnDefinitions"][1]["name"], "Data");
        assert_eq!(t["rows"][0]["cells"], json!(["cm", 1, "20s"]));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }
}
