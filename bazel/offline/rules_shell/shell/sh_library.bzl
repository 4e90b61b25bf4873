"""Offline shim: @rules_shell//shell:sh_library.bzl on Bazel 4."""

def sh_library(**kwargs):
    # buildifier: disable=native-sh-library
    native.sh_library(**kwargs)
