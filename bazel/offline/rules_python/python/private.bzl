"""Drops attributes that rules_python 1.x accepts and Bazel 4's native rules do not."""

_UNSUPPORTED = [
    "config_settings",
    "interpreter_args",
    "main_module",
    "precompile",
    "precompile_invalidation_mode",
    "precompile_optimize_level",
    "precompile_source_retention",
    "pyc_collection",
    "pyi_deps",
    "pyi_srcs",
]

def native_kwargs(kwargs):
    return {k: v for k, v in kwargs.items() if k not in _UNSUPPORTED}
