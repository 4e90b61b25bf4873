"""Python package dependencies (`@pypi//<name>`) that the worker image provides instead under --config=remote.

    deps = [":my_lib"] + pypi("torch", "transformers"),

By default a target depends on the hub's packages: rules_python's wheels in connected mode (Bazel 8), the venv's
packages in offline mode (Bazel 4, whose @pypi stands for the venv). With --define=cpu_finetune_python=image, which
--config=remote sets, the interpreter is the worker image's (//bazel/platforms:image_python_toolchain) and so are
its packages: the same lock, pinned by the image digest in the action's platform; nothing from @pypi is built,
fetched or uploaded. That is also what lets a macOS host send Linux tests: its hub has no Linux wheels.
"""

def pypi(*names):
    """The `@pypi//<name>` targets for `names`, or none when the interpreter comes from the worker image."""
    return select({
        "//bazel:python_from_image": [],
        "//conditions:default": ["@pypi//" + name for name in names],
    })
