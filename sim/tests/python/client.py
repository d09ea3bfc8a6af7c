"""The simulator driven by the official Python client (`kubernetes` from PyPI).

Usage: python3 client.py KUBECONFIG. Exits non-zero with the failing assertion on error.
"""
import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
apps = client.AppsV1Api()

# List.
pods = v1.list_pod_for_all_namespaces()
assert pods.items, "seeded pods are listed"
assert all(p.status.phase == "Running" for p in pods.items)
assert apps.list_deployment_for_all_namespaces().items, "deployments are listed"
page = v1.list_namespace(limit=2)
assert len(page.items) == 2 and page.metadata._continue, "pagination"

# Watch from the current version, in the background, while this thread writes.
events = []
start_rv = v1.list_namespaced_pod("default").metadata.resource_version


def follow():
    w = watch.Watch()
    for ev in w.stream(v1.list_namespaced_pod, "default", resource_version=start_rv, timeout_seconds=20):
        events.append((ev["type"], ev["object"].metadata.name))
        if ev["type"] == "DELETED":
            w.stop()


t = threading.Thread(target=follow)
t.start()

# Create; a second create conflicts.
body = client.V1Pod(
    metadata=client.V1ObjectMeta(name="py-pod", labels={"app": "py"}),
    spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="nginx:1")]),
)
created = v1.create_namespaced_pod("default", body)
assert created.metadata.uid
try:
    v1.create_namespaced_pod("default", body)
    raise AssertionError("second create must fail")
except ApiException as e:
    assert e.status == 409, e

# Patch: a dict body is sent as a strategic merge patch; a list as a JSON patch.
patched = v1.patch_namespaced_pod(
    "py-pod", "default", {"metadata": {"labels": {"tier": "x"}}, "spec": {"containers": [{"name": "c", "image": "nginx:2"}]}}
)
assert patched.metadata.labels == {"app": "py", "tier": "x"}, patched.metadata.labels
assert patched.spec.containers[0].image == "nginx:2"
patched = v1.patch_namespaced_pod("py-pod", "default", [{"op": "add", "path": "/metadata/labels/extra", "value": "y"}])
assert patched.metadata.labels["extra"] == "y"

# Delete; then 404.
v1.delete_namespaced_pod("py-pod", "default")
try:
    v1.read_namespaced_pod("py-pod", "default")
    raise AssertionError("read after delete must fail")
except ApiException as e:
    assert e.status == 404, e

# Create with typed bodies: a ConfigMap, and a Deployment the edge's controllers roll out.
cm = v1.create_namespaced_config_map(
    "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py-cm"), data={"k": "v"})
)
assert cm.data == {"k": "v"} and cm.metadata.resource_version, cm
dep = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="py-dep"),
    spec=client.V1DeploymentSpec(
        replicas=2,
        selector=client.V1LabelSelector(match_labels={"app": "py-dep"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "py-dep"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="nginx:1.27")]),
        ),
    ),
)
created = apps.create_namespaced_deployment("default", dep)
assert created.spec.replicas == 2 and created.metadata.generation == 1, created
deadline = time.time() + 30
while (apps.read_namespaced_deployment("py-dep", "default").status.ready_replicas or 0) < 2:
    assert time.time() < deadline, "py-dep's pods never became ready"
    time.sleep(0.1)
dep_pods = v1.list_namespaced_pod("default", label_selector="app=py-dep").items
assert len(dep_pods) == 2 and all(p.status.phase == "Running" for p in dep_pods), dep_pods
apps.delete_namespaced_deployment("py-dep", "default")
v1.delete_namespaced_config_map("py-cm", "default")

t.join(25)
seen = [e for e in events if e[1] == "py-pod"]
assert seen == [("ADDED", "py-pod"), ("MODIFIED", "py-pod"), ("MODIFIED", "py-pod"), ("DELETED", "py-pod")], events
print("python client: ok")
