#!/usr/bin/env bash
# Passes only inside the worker image, run by a worker's sandbox (tools/remote/integration_test.sh runs it with
# --test_env=HOST_ONLY_PATH=<a file that exists only on the host>).
set -u
failed=0
check() { # what condition
  if eval "$2"; then echo "PASS: $1"; else echo "FAIL: $1"; failed=1; fi
}
check "the image's marker /etc/cpu-finetune-image is there" '[[ -f /etc/cpu-finetune-image ]]'
check "the host-only path '${HOST_ONLY_PATH:-}' is absent" '[[ -n "${HOST_ONLY_PATH:-}" && ! -e "$HOST_ONLY_PATH" ]]'
check "runs as the image's unprivileged user (uid 10001)" '[[ $EUID -eq 10001 ]]'
check "the image's root is read-only" '! (: >/etc/cpu-finetune-write-probe) 2>/dev/null'
check "/tmp is writable" '(: >/tmp/probe) && rm /tmp/probe'
check "no network interface but loopback" '[[ "$(awk "NR > 2 { print \$1 }" /proc/net/dev)" == "lo:" ]]'
check "the image's venv runs torch" '/opt/cpu-finetune/venv/bin/python3 -c "import torch" 2>/dev/null'
exit "$failed"
