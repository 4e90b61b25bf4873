"""The remote worker image, pinned by digest. docker/build.sh builds it; `docker/build.sh --pin` writes both digests.

//docker:worker_image_test fails when WORKER_IMAGE_INPUTS is not the digest of the recipe's files
(tools/remote/oci.py: IMAGE_INPUTS): the lock or the recipe changed and the image was not rebuilt.
"""

# Where the team pushes it (docker/README.md). Self-hosted NativeLink and tools/remote/worker.py match the action's
# container-image property against the workers' byte for byte: the workers must advertise exactly WORKER_IMAGE.
WORKER_IMAGE_REPOSITORY = "ghcr.io/cpu-finetune/worker"

# The image's manifest digest (sha256 of its manifest), as docker/build.sh prints it and a registry keeps it.
WORKER_IMAGE_DIGEST = "sha256:ad371c74f5f8ca5391970324a841fce56ddc0ce3f453eafbbb37d939fa7d50d1"

# The digest of the files the image was built from (tools/remote/oci.py inputs .).
WORKER_IMAGE_INPUTS = "sha256:5852ceeccb50bfe68537031c0a51d0ea40b59edf00745d86c39ef255b71d00e9"

WORKER_IMAGE = "docker://" + WORKER_IMAGE_REPOSITORY + "@" + WORKER_IMAGE_DIGEST

# The image's interpreter: the venv built from bazel_requirements_lock.txt (docker/build.sh). Remote tests and
# tools run on it (//bazel/platforms:image_python_toolchain), with its packages instead of @pypi's.
WORKER_PYTHON = "/opt/cpu-finetune/venv/bin/python3"
