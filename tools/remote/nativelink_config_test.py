"""Checks the self-hosted NativeLink deployment in tools/remote/nativelink/ without running NativeLink.

What it checks: every config parses (JSON5 written as JSON plus `//` comments); every field name is one that
NativeLink's config structs define (the allow-list below, taken from TraceMachina/nativelink v1.6.6); the names the
configs refer to (stores, schedulers) exist; the scheduler declares every property Bazel sends
(bazel/platforms/BUILD) with container-image `exact`; the worker advertises exactly the pinned WORKER_IMAGE
(docker/worker_image.bzl) and OSFamily Linux, and nothing the scheduler would refuse; the endpoints between the three
configs, compose.yaml and the Bazel flags agree; the compose worker is built FROM the pinned digest; render.sh --check
passes. What it cannot check: that NativeLink accepts the configs or runs an action (no Docker, no NativeLink binary,
no registry here).

Run: python3 tools/remote/nativelink_config_test.py (from anywhere), or as //tools/remote:nativelink_config_test.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import unittest
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(os.path.abspath(__file__)).parents[2]  # the repository (in Bazel: the runfiles' main repository)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.remote import oci  # noqa: E402

import yaml  # noqa: E402

DEPLOYMENT = ROOT / "tools" / "remote" / "nativelink"
CONFIGS = ("cas.json5", "scheduler.json5", "worker.json5")
NATIVELINK_VERSION = "v1.6.6"
NATIVELINK_COMMIT = "a21edb0fc56879124e308bb9a67be679f8eaf885"
INSTANCE_NAME = "main"  # .bazelrc's --remote_instance_name for the self-hosted configs

# --- NativeLink's configuration structs -------------------------------------------------------------------------
# From TraceMachina/nativelink v1.6.6 (commit a21edb0fc56879124e308bb9a67be679f8eaf885):
#   nativelink-config/src/cas_server.rs, nativelink-config/src/stores.rs, nativelink-config/src/schedulers.rs.
# Structs are `#[serde(deny_unknown_fields)]`, enums `rename_all = "snake_case"` (externally tagged: a unit variant
# is a string, a variant with data an object with one key). Serde aliases are listed too.
# A field's type: None (a value not inspected further), "Name" (a struct or enum below), ("list", T), ("map", T),
# ("named", Enum) for NamedConfig<Enum> (`name` + the enum flattened), ("instanced", Struct) for
# WithInstanceName<Struct> (`instance_name` + the struct flattened).
STRUCTS: dict[str, dict[str, object]] = {
    # cas_server.rs
    "CasConfig": {
        "stores": ("list", ("named", "StoreSpec")),
        "workers": ("list", "WorkerConfig"),
        "schedulers": ("list", ("named", "SchedulerSpec")),
        "servers": ("list", "ServerConfig"),
        "experimental_origin_events": None,
        "global": "GlobalConfig",
    },
    "GlobalConfig": {"max_open_files": None, "default_digest_hash_function": None,
                     "default_digest_size_health_check": None},
    "ServerConfig": {"name": None, "listener": "ListenerConfig", "services": "ServicesConfig",
                     "experimental_identity_header": None},
    "HttpListener": {"socket_address": None, "freebind": None, "compression": None, "advanced_http": None,
                     "max_decoding_message_size": None, "tls": "TlsConfig"},
    "TlsConfig": {"cert_file": None, "key_file": None, "client_ca_file": None, "client_crl_file": None},
    "ServicesConfig": {
        "cas": ("list", ("instanced", "CasStoreConfig")),
        "ac": ("list", ("instanced", "AcStoreConfig")),
        "capabilities": ("list", ("instanced", "CapabilitiesConfig")),
        "execution": ("list", ("instanced", "ExecutionConfig")),
        "bytestream": ("list", ("instanced", "ByteStreamConfig")),
        "fetch": ("list", ("instanced", "FetchConfig")),
        "push": ("list", ("instanced", "PushConfig")),
        "worker_api": "WorkerApiConfig",
        "experimental_bep": None,
        "admin": "AdminConfig",
        "health": "HealthConfig",
    },
    "CasStoreConfig": {"cas_store": None, "experimental_chunking": None},
    "AcStoreConfig": {"ac_store": None, "read_only": None},
    "CapabilitiesConfig": {"remote_execution": "CapabilitiesRemoteExecutionConfig",
                           "remote_cache_compression": None},
    "CapabilitiesRemoteExecutionConfig": {"scheduler": None},
    "ExecutionConfig": {"cas_store": None, "scheduler": None},
    "ByteStreamConfig": {"cas_store": None, "max_bytes_per_stream": None,
                         "persist_stream_on_disconnect_timeout_s": None,
                         "persist_stream_on_disconnect_timeout": None},
    "FetchConfig": {"fetch_store": None},
    "PushConfig": {"push_store": None, "read_only": None},
    "WorkerApiConfig": {"scheduler": None, "disable_kill_revoked_operations": None,
                        "kill_revoked_operations_interval_s": None},
    "AdminConfig": {"path": None},
    "HealthConfig": {"path": None, "timeout_seconds": None},
    "LocalWorkerConfig": {
        "name": None, "worker_api_endpoint": "EndpointConfig",
        "max_action_timeout_s": None, "max_action_timeout": None,
        "max_upload_timeout_s": None, "max_upload_timeout": None,
        "max_cleanup_wait_s": None, "max_cleanup_backoff_ms": None, "max_inflight_tasks": None,
        "timeout_handled_externally": None, "entrypoint": None, "experimental_precondition_script": None,
        "cas_fast_slow_store": None, "upload_action_result": "UploadActionResultConfig", "work_directory": None,
        "platform_properties": ("map", "WorkerProperty"),
        "additional_environment": ("map", "EnvironmentSource"),
        "directory_cache": None, "experimental_active_input_leases": None,
        "use_namespaces": None, "use_mount_namespace": None,
    },
    "EndpointConfig": {"uri": None, "timeout": None, "tls_config": "ClientTlsConfig"},
    "UploadActionResultConfig": {
        "ac_store": None, "upload_ac_results_strategy": "UploadCacheResultsStrategy",
        "historical_results_store": None, "upload_historical_results_strategy": "UploadCacheResultsStrategy",
        "success_message_template": None, "failure_message_template": None,
    },
    # stores.rs
    "MemorySpec": {"eviction_policy": "EvictionPolicy"},
    "FilesystemSpec": {"content_path": None, "temp_path": None, "read_buffer_size": None,
                       "eviction_policy": "EvictionPolicy", "block_size": None, "max_concurrent_writes": None,
                       "evict_page_cache": None},
    "EvictionPolicy": {"max_bytes": None, "evict_bytes": None, "max_seconds": None, "max_count": None},
    "VerifySpec": {"backend": "StoreSpec", "verify_size": None, "verify_hash": None},
    "ExistenceCacheSpec": {"backend": "StoreSpec", "eviction_policy": "EvictionPolicy"},
    "FastSlowSpec": {"fast": "StoreSpec", "fast_direction": "StoreDirection", "slow": "StoreSpec",
                     "slow_direction": "StoreDirection", "bypass_dedup_threshold_bytes": None},
    "RefSpec": {"name": None},
    "CompressionSpec": {"backend": "StoreSpec", "compression_algorithm": None},
    "DedupSpec": {"index_store": "StoreSpec", "content_store": "StoreSpec", "min_size": None, "normal_size": None,
                  "max_size": None, "max_concurrent_fetch_per_get": None},
    "NoopSpec": {},
    "GrpcSpec": {
        "instance_name": None, "endpoints": ("list", "GrpcEndpoint"), "store_type": "StoreType", "retry": None,
        "max_concurrent_requests": None, "connections_per_endpoint": None, "rpc_timeout_s": None,
        "use_legacy_resource_names": None, "headers": None, "forward_headers": None,
        "experimental_read_batching": None, "experimental_remote_cache_compression": None,
    },
    "GrpcEndpoint": {"address": None, "tls_config": "ClientTlsConfig", "concurrency_limit": None,
                     "connect_timeout_s": None, "tcp_keepalive_s": None, "http2_keepalive_interval_s": None,
                     "http2_keepalive_timeout_s": None},
    "ClientTlsConfig": {"ca_file": None, "cert_file": None, "key_file": None, "use_native_roots": None},
    # schedulers.rs
    "SimpleSpec": {
        "supported_platform_properties": ("map", "PropertyType"),
        "retain_completed_for_s": None, "client_action_timeout_s": None, "worker_timeout_s": None,
        "max_action_executing_timeout_s": None, "unacknowledged_kill_timeout_s": None, "max_job_retries": None,
        "allocation_strategy": "WorkerAllocationStrategy", "experimental_backend": None,
        "worker_match_logging_interval_s": None, "fallback_match_interval_s": None,
    },
    "CacheLookupSpec": {"ac_store": None, "scheduler": "SchedulerSpec"},
    "PropertyModifierSpec": {"modifications": None, "scheduler": "SchedulerSpec"},
}
# Enum variants: a struct name (data), None (data not inspected), or "unit" (the value is the variant's name).
ENUMS: dict[str, dict[str, object]] = {
    "StoreSpec": {
        "cache_metrics": None, "memory": "MemorySpec", "experimental_cloud_object_store": None,
        "ontap_s3_existence_cache": None, "verify": "VerifySpec", "completeness_checking": None,
        "compression": "CompressionSpec", "dedup": "DedupSpec", "existence_cache": "ExistenceCacheSpec",
        "fast_slow": "FastSlowSpec", "shard": None, "filesystem": "FilesystemSpec", "ref_store": "RefSpec",
        "size_partitioning": None, "grpc": "GrpcSpec", "redis_store": None, "noop": "NoopSpec",
        "experimental_mongo": None,
    },
    "SchedulerSpec": {"simple": "SimpleSpec", "grpc": None, "cache_lookup": "CacheLookupSpec",
                      "property_modifier": "PropertyModifierSpec", "historical_resource": None},
    "WorkerConfig": {"local": "LocalWorkerConfig"},
    "ListenerConfig": {"http": "HttpListener"},
    "WorkerProperty": {"values": ("list", None), "query_cmd": None},
    "EnvironmentSource": {"property": None, "value": None, "from_environment": "unit", "timeout_millis": "unit",
                          "side_channel_file": "unit", "action_directory": "unit"},
    "PropertyType": {"minimum": "unit", "exact": "unit", "priority": "unit", "ignore": "unit"},
    "StoreDirection": {"both": "unit", "update": "unit", "get": "unit", "read_only": "unit"},
    "StoreType": {"cas": "unit", "ac": "unit"},
    "UploadCacheResultsStrategy": {"success_only": "unit", "never": "unit", "everything": "unit",
                                   "failures_only": "unit"},
    "WorkerAllocationStrategy": {"least_recently_used": "unit", "most_recently_used": "unit"},
}


def schema_errors(value: object, kind: object, where: str) -> list[str]:
    """The places where `value` uses a name NativeLink's `kind` does not define."""
    if kind is None:
        return []
    if isinstance(kind, tuple):
        shape, inner = kind
        if shape == "list":
            if not isinstance(value, list):
                return [f"{where}: expected a list"]
            return [e for i, item in enumerate(value) for e in schema_errors(item, inner, f"{where}[{i}]")]
        if shape == "map":
            if not isinstance(value, dict):
                return [f"{where}: expected an object"]
            return [e for key, item in value.items() for e in schema_errors(item, inner, f"{where}.{key}")]
        if not isinstance(value, dict):
            return [f"{where}: expected an object"]
        if shape == "named":
            if not isinstance(value.get("name"), str):
                return [f"{where}: no `name`"]
            rest = {k: v for k, v in value.items() if k != "name"}
            return schema_errors(rest, inner, f"{where}({value['name']})")
        if shape == "instanced":
            rest = {k: v for k, v in value.items() if k != "instance_name"}
            return schema_errors(rest, inner, where)
        raise AssertionError(kind)
    if kind in ENUMS:
        variants = ENUMS[kind]
        if isinstance(value, str):
            ok = variants.get(value) == "unit"
            return [] if ok else [f"{where}: {value!r} is not a {kind} ({', '.join(sorted(variants))})"]
        if not isinstance(value, dict) or len(value) != 1:
            return [f"{where}: a {kind} is one of {sorted(variants)}, got {value!r:.80}"]
        (variant, data), = value.items()
        if variant not in variants or variants[variant] == "unit" and data is not None:
            return [f"{where}: {variant!r} is not a {kind} ({', '.join(sorted(variants))})"]
        return schema_errors(data, variants[variant], f"{where}.{variant}")
    fields = STRUCTS[kind]
    if not isinstance(value, dict):
        return [f"{where}: a {kind} must be an object"]
    errors = [f"{where}.{key}: not a field of {kind}" for key in value if key not in fields]
    return errors + [e for key, item in value.items() if key in fields
                     for e in schema_errors(item, fields[key], f"{where}.{key}")]


def strip_comments(text: str) -> str:
    """JSON5 `//` comments removed (outside strings: `grpc://` and `docker://` values stay)."""
    out, in_string, i = [], False, 0
    while i < len(text):
        char = text[i]
        if in_string:
            out.append(char)
            if char == "\\":
                out.append(text[i + 1])
                i += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
            out.append(char)
        elif text.startswith("//", i):
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        else:
            out.append(char)
        i += 1
    return "".join(out)


def load_json5(name: str) -> dict:
    return json.loads(strip_comments((DEPLOYMENT / name).read_text()))


def host_port(address: str) -> tuple[str, int]:
    parts = urlsplit(address)
    return parts.hostname or "", parts.port or 0


def listeners(config: dict) -> dict[int, dict]:
    """Each server's port -> its services."""
    return {int(server["listener"]["http"]["socket_address"].rsplit(":", 1)[1]): server.get("services") or {}
            for server in config["servers"]}


def stores_by_name(config: dict) -> dict[str, dict]:
    return {store["name"]: store for store in config["stores"]}


def nested_stores(spec: object) -> list[dict]:
    """Every store spec inside `spec` (its own, its backends', fast/slow...)."""
    found = []
    if isinstance(spec, dict):
        for key, value in spec.items():
            if key in ENUMS["StoreSpec"] and isinstance(value, dict):
                found.append({key: value})
            found.extend(nested_stores(value))
    return found


def compose() -> dict:
    return yaml.safe_load((DEPLOYMENT / "compose.yaml").read_text())


def service_running(config_name: str) -> str:
    """The compose service whose command is NativeLink on `config_name` (mounted from this directory)."""
    matches = [name for name, service in compose()["services"].items()
               if any(str(v).startswith(f"./{config_name}:") for v in service.get("volumes", []))
               and any(str(arg).endswith("/" + config_name) for arg in service.get("command", []))]
    if len(matches) != 1:
        raise AssertionError(f"expected one compose service running {config_name}, found {matches}")
    return matches[0]


def bazel_exec_properties() -> dict[str, object]:
    """//bazel/platforms:remote_worker's exec_properties: literal strings, or the name of a loaded constant."""
    tree = ast.parse((ROOT / "bazel" / "platforms" / "BUILD").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "platform":
            keywords = {k.arg: k.value for k in node.keywords}
            if getattr(keywords.get("name"), "value", None) == "remote_worker":
                return {ast.literal_eval(k): (v.value if isinstance(v, ast.Constant) else ast.unparse(v))
                        for k, v in zip(keywords["exec_properties"].keys, keywords["exec_properties"].values)}
    raise AssertionError("no platform(name = 'remote_worker') in bazel/platforms/BUILD")


class ConfigsTest(unittest.TestCase):
    def setUp(self) -> None:
        self.cas, self.scheduler, self.worker_config = (load_json5(name) for name in CONFIGS)
        self.worker = self.worker_config["workers"][0]["local"]
        self.pin = oci.read_pin(ROOT)

    def test_configs_parse_as_json_once_comments_are_stripped(self) -> None:
        for name in CONFIGS:
            with self.subTest(name):
                self.assertIsInstance(load_json5(name), dict)

    def test_fields_are_nativelinks(self) -> None:
        for name in CONFIGS:
            with self.subTest(name):
                self.assertEqual(schema_errors(load_json5(name), "CasConfig", name), [])

    def test_the_schema_check_catches_a_misspelt_field(self) -> None:
        broken = load_json5("worker.json5")
        broken["workers"][0]["local"]["max_action_timout_s"] = 1
        broken["stores"][0]["grpc"]["store_type"] = "CAS"
        errors = schema_errors(broken, "CasConfig", "worker.json5")
        self.assertEqual(len(errors), 2, errors)

    def test_every_config_names_the_version_checked(self) -> None:
        for name in (*CONFIGS, "compose.yaml", "worker.Dockerfile"):
            with self.subTest(name):
                self.assertIn(NATIVELINK_VERSION, (DEPLOYMENT / name).read_text())
        for name in CONFIGS:
            with self.subTest(name):
                self.assertIn(NATIVELINK_COMMIT, (DEPLOYMENT / name).read_text())

    def test_references_resolve(self) -> None:
        for name in CONFIGS:
            config = load_json5(name)
            stores = stores_by_name(config)
            schedulers = {s["name"] for s in config.get("schedulers") or []}
            refs = [spec["ref_store"]["name"] for store in config["stores"] for spec in nested_stores(store)
                    if "ref_store" in spec]
            for services in listeners(config).values():
                for service in ("cas", "bytestream", "execution"):
                    refs += [entry["cas_store"] for entry in services.get(service) or []]
                refs += [entry["ac_store"] for entry in services.get("ac") or []]
                scheduler_refs = [entry["scheduler"] for entry in services.get("execution") or []]
                scheduler_refs += [e["remote_execution"]["scheduler"] for e in services.get("capabilities") or []
                                   if "remote_execution" in e]
                if "worker_api" in services:
                    scheduler_refs.append(services["worker_api"]["scheduler"])
                with self.subTest(name, kind="schedulers"):
                    self.assertLessEqual(set(scheduler_refs), schedulers)
            for worker in config.get("workers") or []:
                refs += [worker["local"]["cas_fast_slow_store"], worker["local"]["upload_action_result"]["ac_store"]]
                # The worker's store must be fast_slow with a filesystem fast store (it hardlinks inputs).
                fast_slow = stores[worker["local"]["cas_fast_slow_store"]]["fast_slow"]
                self.assertIn("filesystem", fast_slow["fast"])
            with self.subTest(name, kind="stores"):
                self.assertLessEqual(set(refs), set(stores))

    def test_cas_verifies_uploads(self) -> None:
        store = stores_by_name(self.cas)[listeners(self.cas)[50051]["cas"][0]["cas_store"]]
        self.assertEqual(store["verify"]["verify_size"], True)
        self.assertEqual(store["verify"]["verify_hash"], True)
        self.assertIn("filesystem", store["verify"]["backend"])
        ac = stores_by_name(self.cas)[listeners(self.cas)[50051]["ac"][0]["ac_store"]]
        self.assertIn("filesystem", ac)

    def test_scheduler_declares_every_property_bazel_sends(self) -> None:
        supported = self.scheduler["schedulers"][0]["simple"]["supported_platform_properties"]
        sent = bazel_exec_properties()
        self.assertEqual(sent.get("container-image"), "WORKER_IMAGE")  # the pin, loaded from worker_image.bzl
        for key in sent:
            with self.subTest(key):
                self.assertIn(key, supported)
        self.assertEqual(supported["container-image"], "exact")
        self.assertEqual(supported["OSFamily"], "exact")
        # Sent by actions that need the network; every action here has it (see scheduler.json5).
        self.assertEqual(supported["dockerNetwork"], "ignore")

    def test_worker_advertises_the_pin(self) -> None:
        properties = self.worker["platform_properties"]
        self.assertEqual(properties["container-image"], {"values": [self.pin["WORKER_IMAGE"]]})
        self.assertEqual(self.pin["WORKER_IMAGE"],
                         f"docker://{self.pin['WORKER_IMAGE_REPOSITORY']}@{self.pin['WORKER_IMAGE_DIGEST']}")
        self.assertEqual(properties["OSFamily"], {"values": ["Linux"]})
        for key, value in bazel_exec_properties().items():
            expected = self.pin["WORKER_IMAGE"] if value == "WORKER_IMAGE" else value
            with self.subTest(key):
                self.assertEqual(properties[key]["values"], [expected])
        # A worker advertising a key the scheduler does not declare is refused at connect_worker().
        supported = self.scheduler["schedulers"][0]["simple"]["supported_platform_properties"]
        self.assertLessEqual(set(properties), set(supported))
        self.assertGreaterEqual(int(self.worker["max_action_timeout_s"]), 3600)  # Bazel's "eternal"

    def test_render_check_passes(self) -> None:
        result = subprocess.run(["bash", str(DEPLOYMENT / "render.sh"), "--check"], capture_output=True, text=True,
                                env={**os.environ, "PYTHON": sys.executable})
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_endpoints_agree(self) -> None:
        services = compose()["services"]
        cas, scheduler, worker = (service_running(name) for name in CONFIGS)
        cas_ports, scheduler_ports = listeners(self.cas), listeners(self.scheduler)
        # The CAS port that serves instance `main`'s CAS, AC and ByteStream to clients.
        (cas_port,) = [port for port, s in cas_ports.items()
                       if any(e.get("instance_name") == INSTANCE_NAME for e in s.get("cas") or [])]
        for service in ("ac", "bytestream", "capabilities"):
            self.assertIn(INSTANCE_NAME, [e.get("instance_name", "") for e in cas_ports[cas_port][service]])
        (execution_port,) = [port for port, s in scheduler_ports.items() if s.get("execution")]
        self.assertIn(INSTANCE_NAME, [e.get("instance_name", "") for e in scheduler_ports[execution_port]["execution"]])
        (worker_api_port,) = [port for port, s in scheduler_ports.items() if "worker_api" in s]
        # The worker API on its own listener, with nothing clients use.
        self.assertLessEqual(set(scheduler_ports[worker_api_port]), {"worker_api", "health", "admin"})
        self.assertNotEqual(worker_api_port, execution_port)

        self.assertEqual(host_port(self.worker["worker_api_endpoint"]["uri"]), (scheduler, worker_api_port))
        # Every gRPC store (the scheduler's and the worker's) reaches the CAS server on instance `main`.
        for name, config in (("scheduler.json5", self.scheduler), ("worker.json5", self.worker_config)):
            grpc = [spec["grpc"] for store in config["stores"] for spec in nested_stores(store) if "grpc" in spec]
            self.assertTrue(grpc, name)
            for spec in grpc:
                with self.subTest(name, store=spec["store_type"]):
                    self.assertEqual(spec["instance_name"], INSTANCE_NAME)
                    self.assertEqual([host_port(e["address"]) for e in spec["endpoints"]], [(cas, cas_port)])
        # The worker's CAS (slow side) and AC are the CAS server's, not local stores.
        worker_stores = stores_by_name(self.worker_config)
        slow = worker_stores[self.worker["cas_fast_slow_store"]]["fast_slow"]["slow"]
        self.assertEqual(worker_stores[slow["ref_store"]["name"]]["grpc"]["store_type"], "cas")
        self.assertEqual(worker_stores[self.worker["upload_action_result"]["ac_store"]]["grpc"]["store_type"], "ac")

        # Compose publishes the client ports and not the worker API; all three share a network.
        def published(service: str) -> set[int]:
            return {int(str(p).rsplit(":", 1)[1].split("/")[0]) for p in services[service].get("ports", [])}
        self.assertEqual(published(cas), {cas_port})
        self.assertEqual(published(scheduler), {execution_port})
        self.assertEqual(published(worker), set())
        networks = [set(services[s].get("networks", [])) for s in (cas, scheduler, worker)]
        self.assertTrue(set.intersection(*networks), networks)
        # Data paths live on the volumes compose mounts (the worker's CAS and work directory on one filesystem).
        for service, config in ((cas, self.cas), (worker, self.worker_config)):
            mounts = [str(v).split(":")[1] for v in services[service]["volumes"] if not str(v).startswith("./")]
            paths = [spec["filesystem"][key] for store in config["stores"] for spec in nested_stores(store)
                     if "filesystem" in spec for key in ("content_path", "temp_path")]
            if service == worker:
                paths.append(self.worker["work_directory"])
            for path in paths:
                with self.subTest(service, path=path):
                    self.assertTrue(any(path.startswith(m.rstrip("/") + "/") for m in mounts), mounts)

        # The Bazel flags the README and .bazelrc.template give for the self-hosted deployment.
        sources = [DEPLOYMENT / "README.md"]
        sources.append(ROOT / ".bazelrc.template")
        for source in sources:
            text = source.read_text()
            with self.subTest(source.name):
                self.assertRegex(text, rf"build:nativelink --remote_executor=grpc://[\w.-]+:{execution_port}\b")
                self.assertRegex(text, rf"build:nativelink --remote_cache=grpc://[\w.-]+:{cas_port}\b")
                self.assertIn(f"build:nativelink --remote_instance_name={INSTANCE_NAME}", text)
                self.assertNotIn("build-faster.nativelink.net", text)

    def test_compose_worker_is_built_from_the_pin(self) -> None:
        services = compose()["services"]
        worker = services[service_running("worker.json5")]
        build = worker["build"]
        self.assertEqual(build["args"]["WORKER_IMAGE"],
                         f"{self.pin['WORKER_IMAGE_REPOSITORY']}@{self.pin['WORKER_IMAGE_DIGEST']}")
        self.assertEqual("docker://" + build["args"]["WORKER_IMAGE"], self.pin["WORKER_IMAGE"])
        self.assertEqual(str(worker["user"]).split(":")[0], "10001")
        dockerfile = (DEPLOYMENT / build["dockerfile"]).read_text()
        stages = re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
        self.assertEqual(stages[-1], "${WORKER_IMAGE}")  # the image the worker runs in is the pinned one
        self.assertRegex(dockerfile, r"(?m)^ARG WORKER_IMAGE$")  # no default that could drift from the pin
        self.assertRegex(dockerfile, r"(?m)^USER 10001(:10001)?$")
        # One NativeLink version across the deployment.
        nativelink = f"ghcr.io/tracemachina/nativelink:{NATIVELINK_VERSION}"
        self.assertEqual(build["args"]["NATIVELINK_IMAGE"], nativelink)
        self.assertIn(f"ARG NATIVELINK_IMAGE={nativelink}", dockerfile)
        for name in (service_running("cas.json5"), service_running("scheduler.json5")):
            self.assertEqual(services[name]["image"], nativelink)


if __name__ == "__main__":
    unittest.main()
