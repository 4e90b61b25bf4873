"""Offline shim: @rules_python//python:py_test.bzl on Bazel 4."""

load(":private.bzl", "native_kwargs")

def py_test(**kwargs):
    # buildifier: disable=native-py
    native.py_test(**native_kwargs(kwargs))
