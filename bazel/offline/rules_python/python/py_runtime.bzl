"""Offline shim: @rules_python//python:py_runtime.bzl on Bazel 4."""

load(":private.bzl", "native_kwargs")

def py_runtime(**kwargs):
    # buildifier: disable=native-py
    native.py_runtime(**native_kwargs(kwargs))
