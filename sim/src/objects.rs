//! What the API server and the controllers behind it do to objects: names, uids, validation,
//! defaulting, and the status a real cluster would soon report (the simulator pretends every
//! kubelet and controller acts instantly: pods run, deployments are available).

use std::time::SystemTime;

use kubehub_kapi::time::rfc3339;
use kubehub_kapi::Status;
use rand::Rng;
use serde_json::{json, Map, Value};

/// What defaulting needs from the cluster.
#[derive(Debug)]
pub struct Ctx<'a, R: Rng> {
    /// The cluster's seeded RNG.
    pub rng: &'a mut R,
    /// Now.
    pub now: SystemTime,
    /// A node to schedule new pods on.
    pub node: &'a str,
}

/// A random v4 UUID from `rng`.
pub fn uuid<R: Rng>(rng: &mut R) -> String {
    let b: [u8; 16] = rng.random();
    let x = u128::from_be_bytes(b);
    let x = (x & !(0xf << 76)) | (0x4 << 76); // version 4
    let x = (x & !(0x3 << 62)) | (0x2 << 62); // variant 10
    let h = format!("{x:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The 5-character suffix kube-apiserver appends to a `generateName`.
pub fn name_suffix<R: Rng>(rng: &mut R) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// Validates an object name for a resource as kube-apiserver does (422 Invalid).
pub fn validate_name(group: &str, kind: &str, resource: &str, name: &str) -> Result<(), Status> {
    let (ok, msg) = match resource {
        "namespaces" => (is_label(name), LABEL_MSG),
        "services" => (
            is_label(name) && name.as_bytes()[0].is_ascii_lowercase(),
            DNS1035_MSG,
        ),
        _ => (
            name.len() <= 253 && name.split('.').all(is_label),
            SUBDOMAIN_MSG,
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(Status::invalid(
            group,
            kind,
            name,
            "metadata.name",
            &format!("Invalid value: {name:?}: {msg}"),
        ))
    }
}

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v.get(key).is_some_and(Value::is_object) {
        v[key] = json!({});
    }
    match v.get_mut(key) {
        Some(Value::Object(m)) => m,
        _ => unreachable!("just made it an object"),
    }
}

fn default(m: &mut Map<String, Value>, k: &str, v: Value) {
    m.entry(k.to_owned()).or_insert(v);
}

/// Kinds whose `metadata.generation` tracks changes to `spec`.
pub fn has_generation(kind: &str) -> bool {
    matches!(
        kind,
        "Pod" | "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet"
    )
}

/// Kinds whose `status` is a subresource: writes to the main resource keep the stored status.
pub fn status_is_subresource(kind: &str) -> bool {
    matches!(
        kind,
        "Pod"
            | "Namespace"
            | "Node"
            | "Service"
            | "Deployment"
            | "ReplicaSet"
            | "DaemonSet"
            | "StatefulSet"
    )
}

/// Fills what kube-apiserver's defaulting and the (simulated) controllers add on create.
pub fn on_create<R: Rng>(kind: &str, obj: &mut Value, ctx: &mut Ctx<'_, R>) {
    let now = rfc3339(ctx.now);
    match kind {
        "Namespace" => {
            let name = obj["metadata"]["name"].clone();
            let labels = obj_mut(obj, "metadata")
                .entry("labels")
                .or_insert_with(|| json!({}));
            if !labels.is_object() {
                *labels = json!({});
            }
            labels["kubernetes.io/metadata.name"] = name;
            default(obj_mut(obj, "spec"), "finalizers", json!(["kubernetes"]));
            obj["status"] = json!({"phase": "Active"});
        }
        "Pod" => {
            let spec = obj_mut(obj, "spec");
            default(spec, "restartPolicy", json!("Always"));
            default(spec, "dnsPolicy", json!("ClusterFirst"));
            default(spec, "schedulerName", json!("default-scheduler"));
            default(spec, "serviceAccountName", json!("default"));
            default(spec, "terminationGracePeriodSeconds", json!(30));
            default(spec, "nodeName", json!(ctx.node));
            if let Some(cs) = spec.get_mut("containers").and_then(Value::as_array_mut) {
                for c in cs {
                    if let Some(c) = c.as_object_mut() {
                        default(c, "imagePullPolicy", json!("IfNotPresent"));
                        default(c, "terminationMessagePath", json!("/dev/termination-log"));
                        default(c, "terminationMessagePolicy", json!("File"));
                    }
                }
            }
            let ip = format!(
                "10.244.{}.{}",
                ctx.rng.random_range(0..=255u8),
                ctx.rng.random_range(2..=254u8)
            );
            obj["status"] = json!({
                "phase": "Running",
                "hostIP": "192.168.0.10",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "startTime": now,
                "qosClass": "BestEffort",
            });
            pod_status(obj, ctx.now, None);
        }
        "Service" => {
            let spec = obj_mut(obj, "spec");
            default(spec, "type", json!("ClusterIP"));
            default(spec, "sessionAffinity", json!("None"));
            if spec.get("clusterIP").is_none() {
                let ip = format!(
                    "10.96.{}.{}",
                    ctx.rng.random_range(0..=255u8),
                    ctx.rng.random_range(1..=254u8)
                );
                spec.insert("clusterIPs".into(), json!([ip]));
                spec.insert("clusterIP".into(), json!(ip));
            }
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    if let Some(p) = p.as_object_mut() {
                        default(p, "protocol", json!("TCP"));
                        if let Some(port) = p.get("port").cloned() {
                            default(p, "targetPort", port);
                        }
                    }
                }
            }
            default(obj_mut(obj, "status"), "loadBalancer", json!({}));
        }
        "Deployment" => {
            let spec = obj_mut(obj, "spec");
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            default(
                spec,
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
            );
        }
        "Secret" => {
            if let Some(o) = obj.as_object_mut() {
                default(o, "type", json!("Opaque"));
            }
        }
        "Node" => {
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or("node")
                .to_owned();
            let ip = format!(
                "192.168.{}.{}",
                ctx.rng.random_range(0..=255u8),
                ctx.rng.random_range(2..=254u8)
            );
            obj["status"] = json!({
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now}],
                "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                "nodeInfo": {"kubeletVersion": "v1.32.4", "osImage": "Debian GNU/Linux 12 (bookworm)",
                    "kernelVersion": "6.1.0-sim", "containerRuntimeVersion": "containerd://1.7.24",
                    "operatingSystem": "linux", "architecture": "amd64"},
                "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            });
        }
        _ => {}
    }
    workload_status(kind, obj);
}

/// After an update of the main resource: keep the stored status where status is a subresource,
/// then let the simulated controllers react to the new spec.
pub fn on_update(kind: &str, old: &Value, obj: &mut Value, now: SystemTime) {
    if status_is_subresource(kind) {
        match old.get("status") {
            Some(s) => obj["status"] = s.clone(),
            None => {
                if let Some(o) = obj.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    if kind == "Pod" && old.get("spec") != obj.get("spec") {
        pod_status(obj, now, Some(old));
    }
    workload_status(kind, obj);
}

/// Container statuses that match the pod's containers: running and ready, restart counts kept
/// from `old`.
fn pod_status(pod: &mut Value, now: SystemTime, old: Option<&Value>) {
    let now = rfc3339(now);
    let containers = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let statuses: Vec<Value> = containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let name = c["name"].as_str().unwrap_or("");
            let prev = old
                .and_then(|o| o["status"]["containerStatuses"].as_array())
                .and_then(|a| a.iter().find(|s| s["name"] == name));
            let restarts = prev.and_then(|p| p["restartCount"].as_i64()).unwrap_or(0);
            json!({
                "name": name,
                "ready": true,
                "started": true,
                "restartCount": restarts,
                "image": c["image"],
                "imageID": format!("{}@sha256:{:064x}", c["image"].as_str().unwrap_or(""), i + 1),
                "containerID": format!("containerd://{:064x}", i + 7),
                "state": {"running": {"startedAt": now}},
            })
        })
        .collect();
    pod["status"]["containerStatuses"] = json!(statuses);
    pod["status"]["conditions"] = json!([
        {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": now},
        {"type": "Initialized", "status": "True", "lastTransitionTime": now},
        {"type": "Ready", "status": "True", "lastTransitionTime": now},
        {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
    ]);
}

/// Workload status as if the controllers had already converged on the spec (Deployments and
/// ReplicaSets get theirs from [`super::controllers`]).
fn workload_status(kind: &str, obj: &mut Value) {
    let generation = obj["metadata"]["generation"].clone();
    let replicas = obj["spec"]["replicas"].as_i64().unwrap_or(1);
    match kind {
        "Deployment" | "ReplicaSet" if obj["spec"]["replicas"].is_null() => {
            obj["spec"]["replicas"] = json!(1);
        }
        "StatefulSet" => {
            if obj["spec"]["replicas"].is_null() {
                obj["spec"]["replicas"] = json!(1);
            }
            obj["status"] = json!({
                "observedGeneration": generation,
                "replicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
                "updatedReplicas": replicas,
                "currentReplicas": replicas,
            });
        }
        "DaemonSet" => {
            obj["status"] = json!({
                "observedGeneration": generation,
                "desiredNumberScheduled": 1, "currentNumberScheduled": 1, "numberReady": 1,
                "updatedNumberScheduled": 1, "numberAvailable": 1, "numberMisscheduled": 0,
            });
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn uuids_and_suffixes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let u = uuid(&mut rng);
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        let s = name_suffix(&mut rng);
        assert_eq!(s.len(), 5);
    }

    #[test]
    fn names() {
        assert!(validate_name("", "Pod", "pods", "web-1.a").is_ok());
        let err = validate_name("", "Pod", "pods", "Web").unwrap_err();
        assert_eq!(err.code, 422);
        assert!(err.message.starts_with("Pod \"Web\" is invalid: metadata.name: Invalid value: \"Web\": a lowercase RFC 1123 subdomain"));
        assert!(validate_name("", "Namespace", "namespaces", "a.b").is_err());
        assert!(validate_name("", "Service", "services", "1abc").is_err());
    }

    #[test]
    fn pods_run_and_deployments_converge() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut ctx = Ctx {
            rng: &mut rng,
            now: SystemTime::now(),
            node: "n1",
        };
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
        on_create("Pod", &mut pod, &mut ctx);
        assert_eq!(pod["status"]["phase"], "Running");
        assert_eq!(pod["spec"]["nodeName"], "n1");
        assert_eq!(pod["status"]["containerStatuses"][0]["ready"], true);
        let mut d = json!({"metadata": {"name": "d", "generation": 1}, "spec": {}});
        on_create("Deployment", &mut d, &mut ctx);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        let mut s = json!({"metadata": {"name": "s", "generation": 1}, "spec": {"replicas": 3}});
        on_create("StatefulSet", &mut s, &mut ctx);
        assert_eq!(s["status"]["readyReplicas"], 3);
        let old = s.clone();
        let mut new = s.clone();
        new["spec"]["replicas"] = json!(5);
        new["status"] = json!({"bogus": true});
        on_update("StatefulSet", &old, &mut new, SystemTime::now());
        assert_eq!(new["status"]["availableReplicas"], 5);
        assert!(new["status"].get("bogus").is_none());
    }
}
