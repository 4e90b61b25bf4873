"""The remote worker image, pinned by digest (see docker/README.md to build, push and re-pin)."""

# After `docker push`, replace this with the pushed image's repository@sha256 digest.
WORKER_IMAGE = "docker://ghcr.io/cpu-finetune/worker@sha256:0000000000000000000000000000000000000000000000000000000000000000"
