#!/usr/bin/env bash
# Fails on purpose: tools/remote/integration_test.sh checks that a failing remote
# test fails the build and that its log (this marker) reaches the user.
echo "remote-integration: this test fails on purpose (exit 3) on $(hostname)"
exit 3
