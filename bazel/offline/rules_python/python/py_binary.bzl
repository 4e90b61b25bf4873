"""Offline shim: @rules_python//python:py_binary.bzl on Bazel 4."""

load(":private.bzl", "native_kwargs")

def py_binary(**kwargs):
    # buildifier: disable=native-py
    native.py_binary(**native_kwargs(kwargs))
