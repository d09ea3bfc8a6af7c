//! Deterministic content for simulated clusters, and a churn generator that keeps it changing.
//!
//! Seeding draws every random choice from the cluster's seeded RNG: the same seed and sizes give
//! the same objects (names, labels, sizes). Pods look like real ones (owner references, several
//! containers with env, probes, resources and mounts, the projected service-account volume,
//! status conditions): 2-6 KB of JSON each. Each Deployment's ReplicaSet and pods are made by
//! the simulated controllers ([`super::controllers`]), as at run time, without events.

use std::sync::Arc;
use std::time::Duration;

use rand::seq::IndexedRandom;
use rand::Rng;
use serde_json::{json, Value};

use super::cluster::Cluster;
use super::controllers;
use kubehub_kapi::Status;

/// How much to put in a cluster.
#[derive(Debug, Clone)]
pub struct SeedSpec {
    /// Application namespaces (besides the system ones every cluster has).
    pub namespaces: usize,
    /// Deployments per namespace; each gets a ReplicaSet, a Service and its pods.
    pub deployments_per_namespace: usize,
    /// Pods per deployment.
    pub pods_per_deployment: usize,
    /// ConfigMaps per namespace.
    pub configmaps_per_namespace: usize,
    /// Secrets per namespace.
    pub secrets_per_namespace: usize,
    /// Nodes.
    pub nodes: usize,
}

impl Default for SeedSpec {
    fn default() -> Self {
        SeedSpec {
            namespaces: 3,
            deployments_per_namespace: 2,
            pods_per_deployment: 2,
            configmaps_per_namespace: 2,
            secrets_per_namespace: 1,
            nodes: 2,
        }
    }
}

impl SeedSpec {
    /// Nothing beyond the system namespaces.
    pub fn empty() -> SeedSpec {
        SeedSpec {
            namespaces: 0,
            deployments_per_namespace: 0,
            pods_per_deployment: 0,
            configmaps_per_namespace: 0,
            secrets_per_namespace: 0,
            nodes: 0,
        }
    }
}

const WORDS: &[&str] = &[
    "api", "web", "cache", "queue", "auth", "search", "billing", "media", "edge", "gateway",
    "metrics", "ingest", "worker", "report", "notify", "store",
];
const IMAGES: &[&str] = &[
    "registry.example.com/platform/app",
    "docker.io/library/nginx",
    "quay.io/prometheus/node-exporter",
    "registry.example.com/platform/envoy",
];

fn ty(c: &Cluster, group: &str, resource: &str) -> Result<usize, Status> {
    c.type_index(group, "v1", resource)
        .ok_or_else(|| Status::internal(format!("no type {resource}")))
}

fn env_vars<R: Rng>(rng: &mut R, n: usize) -> Value {
    (0..n)
        .map(|i| {
            let v: String = (0..rng.random_range(8..40))
                .map(|_| rng.random_range(b'a'..=b'z') as char)
                .collect();
            json!({"name": format!("APP_SETTING_{i}"), "value": v})
        })
        .collect()
}

/// A container spec like real workloads have.
fn container<R: Rng>(rng: &mut R, name: &str) -> Value {
    let image = format!(
        "{}:{}.{}.{}",
        IMAGES.choose(rng).unwrap_or(&"nginx"),
        rng.random_range(1..4),
        rng.random_range(0..20),
        rng.random_range(0..10)
    );
    let port = [8080, 8443, 9090, 3000][rng.random_range(0..4)];
    let n_env = rng.random_range(3..14);
    json!({
        "name": name,
        "image": image,
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": env_vars(rng, n_env),
        "resources": {
            "requests": {"cpu": format!("{}m", rng.random_range(1..10) * 50), "memory": format!("{}Mi", rng.random_range(1..16) * 64)},
            "limits": {"memory": format!("{}Mi", rng.random_range(16..32) * 64)}
        },
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": port, "scheme": "HTTP"}, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/livez", "port": port, "scheme": "HTTP"}, "initialDelaySeconds": 15, "periodSeconds": 20, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/app", "readOnly": true},
            {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}
        ],
    })
}

/// A pod template for an app.
fn pod_template<R: Rng>(rng: &mut R, app: &str) -> Value {
    let sidecar = rng.random_bool(0.4);
    let mut containers = vec![container(rng, app)];
    if sidecar {
        containers.push(container(rng, "proxy"));
    }
    json!({
        "metadata": {
            "labels": {"app": app, "tier": if app.len() % 2 == 0 { "backend" } else { "frontend" }},
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"}
        },
        "spec": {
            "containers": containers,
            "volumes": [
                {"name": "config", "configMap": {"name": format!("{app}-config"), "defaultMode": 420}},
                {"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                ]}}
            ],
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ],
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
        }
    })
}

/// Fills `cluster` per `spec`. Returns the number of objects created.
pub fn seed(cluster: &Cluster, spec: &SeedSpec) -> Result<usize, Status> {
    let (nodes, nss, deps, svcs, cms, secrets) = (
        ty(cluster, "", "nodes")?,
        ty(cluster, "", "namespaces")?,
        ty(cluster, "apps", "deployments")?,
        ty(cluster, "", "services")?,
        ty(cluster, "", "configmaps")?,
        ty(cluster, "", "secrets")?,
    );
    let mut n = 0;
    for i in 0..spec.nodes {
        let name = format!("{}-node-{i}", cluster.name());
        let obj = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "node-role.kubernetes.io/edge": ""}}});
        cluster.create(nodes, None, obj, false)?;
        n += 1;
    }
    for i in 0..spec.namespaces {
        let word = cluster.with_rng(|r| *WORDS.choose(r).unwrap_or(&"app"));
        let ns = format!("{word}-{i}");
        cluster.create(nss, None, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"team": word}}}), false)?;
        n += 1;
        for d in 0..spec.deployments_per_namespace {
            let app = format!(
                "{}-{d}",
                cluster.with_rng(|r| *WORDS.choose(r).unwrap_or(&"app"))
            );
            let replicas = spec.pods_per_deployment;
            let tpl = cluster.with_rng(|r| pod_template(r, &app));
            let selector = json!({"matchLabels": {"app": app}});
            // The Deployment, then what its controllers make of it (a ReplicaSet, its pods),
            // without events: seeded content is old, its events long expired.
            cluster.create_inner(deps, Some(&ns), json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": app, "labels": {"app": app}},
                "spec": {"replicas": replicas, "selector": selector, "template": tpl,
                    "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}}}), false)?;
            controllers::sync_deployment(cluster, &ns, &app, false)?;
            cluster.create(svcs, Some(&ns), json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": app, "labels": {"app": app}},
                "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}), false)?;
            n += 3 + replicas;
        }
        for c in 0..spec.configmaps_per_namespace {
            let data = cluster.with_rng(|r| {
                (0..r.random_range(2..8))
                    .map(|k| {
                        (
                            format!("key-{k}"),
                            json!("x".repeat(r.random_range(10..400))),
                        )
                    })
                    .collect::<serde_json::Map<_, _>>()
            });
            cluster.create(cms, Some(&ns), json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("config-{c}")}, "data": data}), false)?;
            n += 1;
        }
        for s in 0..spec.secrets_per_namespace {
            cluster.create(secrets, Some(&ns), json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("secret-{s}")},
                "type": "Opaque", "data": {"password": "c2ltdWxhdGVk"}}), false)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Mutates a cluster at `rate` events per second until dropped: mostly pod updates (a label or
/// annotation, a restart), some pod replacements (delete one, create another), keeping the
/// number of pods steady. Each event is one write, so one watch event.
#[derive(Debug)]
pub struct Churn {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Churn {
    /// Starts churning `cluster` (needs a tokio runtime).
    pub fn start(cluster: Arc<Cluster>, rate: f64) -> Churn {
        let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                tick.tick().await;
                if let Err(e) = churn_once(&cluster) {
                    tracing::debug!(cluster = cluster.name(), "churn step: {e}");
                }
            }
        });
        Churn { task }
    }
}

/// One churn step.
pub fn churn_once(cluster: &Cluster) -> Result<(), Status> {
    let pods = ty(cluster, "", "pods")?;
    let keys = cluster.keys(pods);
    if keys.is_empty() {
        return Ok(());
    }
    let (pick, action) =
        cluster.with_rng(|r| (r.random_range(0..keys.len()), r.random_range(0..10)));
    let (ns, name) = &keys[pick];
    match action {
        0 => {
            // Replace the pod: its ReplicaSet does (a pod without one is recreated as it was).
            // No events: one delete and one create, like every churn step a write or two.
            let pod = get_json(cluster, pods, ns, name)?;
            cluster.delete_inner(pods, Some(ns), name, &Default::default(), false)?;
            let rss = ty(cluster, "apps", "replicasets")?;
            match controllers::controller_of(&pod).filter(|o| o["kind"] == "ReplicaSet") {
                Some(o)
                    if cluster
                        .get(rss, Some(ns), o["name"].as_str().unwrap_or(""))
                        .is_ok() =>
                {
                    let rs = o["name"].as_str().unwrap_or("");
                    controllers::sync_replica_set(cluster, ns, rs, false, true)
                }
                _ => {
                    let template = json!({
                        "metadata": {"labels": pod["metadata"]["labels"], "annotations": pod["metadata"]["annotations"]},
                        "spec": pod["spec"],
                    });
                    let owner = pod["metadata"]["ownerReferences"][0].clone();
                    let prefix = pod["metadata"]["generateName"]
                        .as_str()
                        .unwrap_or("replacement-");
                    let mut p = controllers::pod_for(
                        &template,
                        prefix.trim_end_matches('-'),
                        owner.clone(),
                    );
                    if owner.is_null() {
                        if let Some(m) = p["metadata"].as_object_mut() {
                            m.remove("ownerReferences");
                        }
                    }
                    cluster.create_inner(pods, Some(ns), p, false).map(|_| ())
                }
            }
        }
        1 => {
            // A container restarts.
            let pod = get_json(cluster, pods, ns, name)?;
            let mut status = pod["status"].clone();
            if let Some(c) = status["containerStatuses"].get_mut(0) {
                let n = c["restartCount"].as_i64().unwrap_or(0) + 1;
                c["restartCount"] = json!(n);
                c["lastState"] = json!({"terminated": {"exitCode": 137, "reason": "OOMKilled",
                    "finishedAt": kubehub_kapi::time::now_rfc3339()}});
            }
            merge_patch(
                cluster,
                pods,
                ns,
                name,
                json!({"status": status}),
                Some("status"),
            )
        }
        _ => {
            let tick = cluster.resource_version();
            let annotations = json!({"sim.kubehub.io/tick": tick.to_string()});
            merge_patch(
                cluster,
                pods,
                ns,
                name,
                json!({"metadata": {"annotations": annotations}}),
                None,
            )
        }
    }
}

/// A JSON merge patch of one pod (or its status), as a controller would send it.
fn merge_patch(
    cluster: &Cluster,
    pods: usize,
    ns: &str,
    name: &str,
    patch: Value,
    subresource: Option<&str>,
) -> Result<(), Status> {
    let bytes = serde_json::to_vec(&patch).map_err(|e| Status::internal(e.to_string()))?;
    let merge = super::cluster::PatchType::Merge;
    cluster
        .patch(
            pods,
            Some(ns),
            name,
            merge,
            &bytes,
            subresource,
            false,
            None,
        )
        .map(|_| ())
}

/// One stored object, parsed.
fn get_json(cluster: &Cluster, ty: usize, ns: &str, name: &str) -> Result<Value, Status> {
    serde_json::from_slice(&cluster.get(ty, Some(ns), name)?)
        .map_err(|e| Status::internal(e.to_string()))
}
