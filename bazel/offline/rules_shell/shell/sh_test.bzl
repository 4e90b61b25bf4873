"""Offline shim: @rules_shell//shell:sh_test.bzl on Bazel 4."""

def sh_test(**kwargs):
    # buildifier: disable=native-sh-test
    native.sh_test(**kwargs)
