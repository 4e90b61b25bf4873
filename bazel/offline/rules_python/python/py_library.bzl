"""Offline shim: @rules_python//python:py_library.bzl on Bazel 4."""

load(":private.bzl", "native_kwargs")

def py_library(**kwargs):
    # buildifier: disable=native-py
    native.py_library(**native_kwargs(kwargs))
