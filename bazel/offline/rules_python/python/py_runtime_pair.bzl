"""Offline shim: @rules_python//python:py_runtime_pair.bzl on Bazel 4 (Bazel's own rule)."""

load("@bazel_tools//tools/python:toolchain.bzl", _py_runtime_pair = "py_runtime_pair")

py_runtime_pair = _py_runtime_pair
