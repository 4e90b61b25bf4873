"""Security checks for tools/remote/integration_test.sh against a running mutual-TLS deployment, over gRPC as
Bazel and the workers speak it. Each prints PASS/FAIL lines and exits 1 on a failure.

    tls_check.py connect SERVER [--ca F] [--cert F --key F] (--accepted | --refused)
        one GetCapabilities call: accepted (answers) or refused (UNAVAILABLE: the handshake failed)
    tls_check.py action-cache SERVER --ca F --cert F --key F
        an allowed client cannot write the action cache: the capabilities say update_enabled false,
        UpdateActionResult of a fake model (its blob uploaded first) is refused, and the key has no result
    tls_check.py no-bots SERVER --ca F --cert F --key F
        the clients' endpoint has no Bots API: a developer's certificate cannot register a worker there
    tls_check.py bots PSQL_PORT NAME... --absent | --present
        the bots named are (not) registered with the server (its PostgreSQL `bots` table)

SERVER is grpcs://HOST:PORT or grpc://HOST:PORT; the instance is --instance [main].
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
from pathlib import Path

import grpc
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from buildgrid._protos.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc

# worker.py's channel (run as a script, this directory is on the path): the same TLS handling as the workers.
from worker import open_channel

TIMEOUT_S = 10.0


def report(ok: bool, message: str) -> bool:
    print(f"{'PASS' if ok else 'FAIL'}: {message}")
    return ok


def channel(args: argparse.Namespace) -> grpc.Channel:
    return open_channel(args.server, args.ca, args.cert, args.key)


def check_connect(args: argparse.Namespace) -> bool:
    stub = re_grpc.CapabilitiesStub(channel(args))
    who = f"{args.server} with {args.cert or 'no client certificate'}"
    try:
        stub.GetCapabilities(re_pb2.GetCapabilitiesRequest(instance_name=args.instance), timeout=TIMEOUT_S)
    except grpc.RpcError as error:
        refused = error.code() == grpc.StatusCode.UNAVAILABLE
        if args.accepted:
            return report(False, f"connect: {who}: refused ({error.code().name}: {error.details()})")
        return report(refused, f"connect: {who}: refused at the connection ({error.code().name}: {error.details()})")
    return report(args.accepted, f"connect: {who}: {'accepted' if args.accepted else 'ACCEPTED, expected a refusal'}")


def check_action_cache(args: argparse.Namespace) -> bool:
    ch = channel(args)
    capabilities = re_grpc.CapabilitiesStub(ch).GetCapabilities(
        re_pb2.GetCapabilitiesRequest(instance_name=args.instance), timeout=TIMEOUT_S)
    update_enabled = capabilities.cache_capabilities.action_cache_update_capabilities.update_enabled
    ok = report(not update_enabled, f"action-cache: capabilities say update_enabled={update_enabled}")
    # The attack: a fake "trained model" uploaded to the CAS (clients may write blobs: inputs are uploaded so), and
    # a result pointing at it under an action key nobody ran. With the blob present, an accepted write would be
    # served back.
    model = b"planted model " + os.urandom(16)
    model_digest = re_pb2.Digest(hash=hashlib.sha256(model).hexdigest(), size_bytes=len(model))
    uploaded = re_grpc.ContentAddressableStorageStub(ch).BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(
        instance_name=args.instance, requests=[re_pb2.BatchUpdateBlobsRequest.Request(digest=model_digest, data=model)]),
        timeout=TIMEOUT_S)
    ok &= report(all(r.status.code == 0 for r in uploaded.responses), "action-cache: the fake model's blob is in the CAS")
    digest = re_pb2.Digest(hash=hashlib.sha256(os.urandom(32)).hexdigest(), size_bytes=142)
    result = re_pb2.ActionResult(exit_code=0, output_files=[
        re_pb2.OutputFile(path="model/model.safetensors", digest=model_digest)])
    cache = re_grpc.ActionCacheStub(ch)
    try:
        cache.UpdateActionResult(re_pb2.UpdateActionResultRequest(
            instance_name=args.instance, action_digest=digest, action_result=result), timeout=TIMEOUT_S)
        ok &= report(False, "action-cache: UpdateActionResult from a client was ACCEPTED")
    except grpc.RpcError as error:
        ok &= report(error.code() != grpc.StatusCode.UNAVAILABLE,
                     f"action-cache: UpdateActionResult from a client refused ({error.code().name}: {error.details()})")
    try:
        cache.GetActionResult(re_pb2.GetActionResultRequest(instance_name=args.instance, action_digest=digest),
                              timeout=TIMEOUT_S)
        ok &= report(False, "action-cache: the planted result is served")
    except grpc.RpcError as error:
        ok &= report(error.code() == grpc.StatusCode.NOT_FOUND,
                     f"action-cache: the digest has no result afterwards ({error.code().name})")
    return ok


def check_no_bots(args: argparse.Namespace) -> bool:
    bots = bots_pb2_grpc.BotsStub(channel(args))
    session = bots_pb2.BotSession(bot_id="tls-check-intruder", status=bots_pb2.OK)
    try:
        bots.CreateBotSession(bots_pb2.CreateBotSessionRequest(parent=args.instance, bot_session=session),
                              timeout=TIMEOUT_S)
    except grpc.RpcError as error:
        return report(error.code() == grpc.StatusCode.UNIMPLEMENTED,
                      f"no-bots: CreateBotSession on {args.server} refused ({error.code().name}: {error.details()})")
    return report(False, f"no-bots: CreateBotSession on {args.server} ACCEPTED")


def check_bots(args: argparse.Namespace) -> bool:
    query = "SELECT bot_id FROM bots"
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(args.psql_port), "-U", "postgres", "-d", "buildgrid", "-tAc", query],
        check=True, capture_output=True, text=True).stdout
    registered = {line.strip() for line in out.splitlines() if line.strip()}
    ok = True
    for name in args.names:
        present = any(bot == name or bot.startswith(name) for bot in registered)
        if args.present:
            ok &= report(present, f"bots: {name} is registered")
        else:
            ok &= report(not present, f"bots: {name} is {'REGISTERED' if present else 'not registered'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("connect", "action-cache", "no-bots"):
        sub = commands.add_parser(name)
        sub.add_argument("server")
        sub.add_argument("--instance", default="main")
        sub.add_argument("--ca", type=Path)
        sub.add_argument("--cert", type=Path)
        sub.add_argument("--key", type=Path)
        if name == "connect":
            expect = sub.add_mutually_exclusive_group(required=True)
            expect.add_argument("--accepted", action="store_true")
            expect.add_argument("--refused", action="store_true")
    bots = commands.add_parser("bots")
    bots.add_argument("psql_port", type=int)
    bots.add_argument("names", nargs="+")
    expect = bots.add_mutually_exclusive_group(required=True)
    expect.add_argument("--present", action="store_true")
    expect.add_argument("--absent", action="store_true")
    args = parser.parse_args(argv)
    check = {"connect": check_connect, "action-cache": check_action_cache, "no-bots": check_no_bots,
             "bots": check_bots}[args.command]
    return 0 if check(args) else 1


if __name__ == "__main__":
    raise SystemExit(main())
