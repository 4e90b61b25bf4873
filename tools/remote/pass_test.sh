#!/usr/bin/env bash
# Passes. tools/remote/integration_test.sh runs it as targets the deployment must refuse before they run (an
# unregistered platform property, an image no worker holds, a client without a valid certificate) and, for the
# allowed client, as //tools/remote:tls_probe_test; on the client itself as //tools/remote:client_result_test.
echo "remote-integration: pass_test.sh ran"
