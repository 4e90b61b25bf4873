#!/usr/bin/env bash
# Writes the pinned worker image (docker/worker_image.bzl) into the NativeLink deployment:
#   worker.json5  platform_properties."container-image".values = [WORKER_IMAGE]   (docker://REPOSITORY@DIGEST)
#   compose.yaml  the worker's build arg WORKER_IMAGE = REPOSITORY@DIGEST         (what worker.Dockerfile is FROM)
# from `tools/remote/oci.py pinned`. Run it after `docker/build.sh --pin` (or a change of WORKER_IMAGE_REPOSITORY),
# then rebuild the worker: docker compose -f tools/remote/nativelink/compose.yaml up -d --build worker
#
# usage: tools/remote/nativelink/render.sh [--check]
#   --check  change nothing; exit 1 (naming the files) if either file does not carry the current pin
# PYTHON: the interpreter to run oci.py with (default python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
python="${PYTHON:-python3}"
check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

image="$("$python" "$repo/tools/remote/oci.py" pinned "$repo")"
reference="$("$python" "$repo/tools/remote/oci.py" pinned "$repo" WORKER_IMAGE_REPOSITORY)@$("$python" "$repo/tools/remote/oci.py" pinned "$repo" WORKER_IMAGE_DIGEST)"
if [[ "$image" != "docker://$reference" ]]; then
  echo "render.sh: error: WORKER_IMAGE '$image' is not docker://REPOSITORY@DIGEST ('docker://$reference')" >&2
  exit 1
fi

"$python" - "$here" "$image" "$reference" "$check" <<'PY'
import re
import sys
from pathlib import Path

here, image, reference, check = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "1"
# (file, the pattern around the value, the value it must hold)
edits = [
    ("worker.json5", r'("container-image"\s*:\s*\{\s*"values"\s*:\s*\[\s*")([^"]*)("\s*\])', image),
    ("compose.yaml", r'(\n\s+WORKER_IMAGE:\s*")([^"]*)(")', reference),
]
stale = []
for name, pattern, value in edits:
    path = here / name
    text = path.read_text()
    matches = re.findall(pattern, text)
    if len(matches) != 1:
        sys.exit(f"render.sh: error: {path}: expected one place for the pinned image, found {len(matches)}")
    if matches[0][1] == value:
        continue
    stale.append(f"{name}: {matches[0][1]!r} (pinned: {value!r})")
    if not check:
        path.write_text(re.sub(pattern, lambda m: m.group(1) + value + m.group(3), text))
if check and stale:
    sys.exit("render.sh: not the pinned worker image (run tools/remote/nativelink/render.sh):\n  " + "\n  ".join(stale))
for line in stale:
    print(f"render.sh: updated {line}")
PY
