#!/usr/bin/env bash
# Passes: the target carries a platform property the deployment does not declare,
# so tools/remote/integration_test.sh expects the server to reject it before it runs.
echo "remote-integration: unreachable with an unregistered platform property"
