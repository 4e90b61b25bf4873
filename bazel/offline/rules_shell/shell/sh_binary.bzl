"""Offline shim: @rules_shell//shell:sh_binary.bzl on Bazel 4."""

def sh_binary(**kwargs):
    # buildifier: disable=native-sh-binary
    native.sh_binary(**kwargs)
