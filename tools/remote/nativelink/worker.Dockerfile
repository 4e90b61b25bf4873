# syntax=docker/dockerfile:1
# The NativeLink worker pool's image: the pinned worker image (docker/worker_image.bzl, built by docker/build.sh)
# with NativeLink's worker binary added. NativeLink pulls no image per action: actions run inside this container,
# and the worker advertises the pinned string as `container-image` (worker.json5), so the base must be exactly
# that digest. compose.yaml passes it as WORKER_IMAGE (REPOSITORY@sha256:..., no `docker://`); render.sh keeps
# it equal to the pin. No default: a build without the pinned digest fails instead of using another image.
#
# The binary comes from NativeLink's release image (TraceMachina/nativelink v1.6.6, built with Nix: /bin/nativelink
# is a link into /nix/store, a static musl executable), so /nix/store is copied too and the link resolves
# whether or not COPY follows it.
ARG WORKER_IMAGE
ARG NATIVELINK_IMAGE=ghcr.io/tracemachina/nativelink:v1.6.6

FROM ${NATIVELINK_IMAGE} AS nativelink

FROM ${WORKER_IMAGE}
COPY --from=nativelink /nix/store /nix/store
COPY --from=nativelink /bin/nativelink /usr/local/bin/nativelink
USER 0:0
# The worker's data (its CAS cache and the actions' work directories, one filesystem: inputs are hardlinked).
# A new named volume mounted here starts with this owner.
RUN install -d -o 10001 -g 10001 -m 0750 /var/lib/nativelink
# The image's unprivileged user (docker/build.sh): actions run as uid 10001, as they do on the other workers.
USER 10001:10001
ENV HOME=/home/worker
WORKDIR /home/worker
ENTRYPOINT ["/usr/local/bin/nativelink"]
CMD ["/etc/nativelink/worker.json5"]
