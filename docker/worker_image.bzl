"""The remote worker image, pinned by digest (see docker/README.md to build, push and re-pin)."""

# After `docker push`, replace this with the pushed image's repository@sha256 digest.
WORKER_IMAGE = "docker://ghcr.io/cpu-finetune/worker@sha256:0000000000000000000000000000000000000000000000000000000000000000"

# The image's interpreter: the venv built from bazel_requirements_lock.txt (docker/Dockerfile). Remote tests and
# tools run on it (//bazel/platforms:image_python_toolchain), with its packages instead of @pypi's.
WORKER_PYTHON = "/opt/cpu-finetune/venv/bin/python3"
