#!/usr/bin/env bash
# Regenerates k8s.fds, the FileDescriptorSet the simulator decodes and encodes Kubernetes'
# protobuf with (sim/src/protobuf.rs). Its sources are the `generated.proto` files of
# k8s.io/api and k8s.io/apimachinery as kube-rs/k8s-pb (Apache-2.0) keeps them, with the
# `k8s.io.` package prefix dropped (so `api.core.v1.ConfigMap`), under k8s-pb-codegen/protos.
# The committed k8s.fds: Kubernetes 1.36.0's protos, k8s-pb commit 7d74b0b0eb58, protoc 3.21.12.
# Usage: sim/proto/regen.sh PATH/TO/k8s-pb-codegen/protos   (needs protoc)
set -euo pipefail
src=${1:?usage: regen.sh PATH/TO/k8s-pb-codegen/protos}
out=$(cd "$(dirname "$0")" && pwd)/k8s.fds
cd "$src"
protoc -I. --include_imports --descriptor_set_out="$out" \
  api/core/v1/generated.proto \
  api/apps/v1/generated.proto \
  api/autoscaling/v1/generated.proto \
  api/authorization/v1/generated.proto \
  api/events/v1/generated.proto
