#!/usr/bin/env bash
echo "error: coverage is not available in offline mode (stub @remote_coverage_tools)" >&2
exit 1
