"""The environment of this repository's own build actions that run Python (FineTune, GatherSweep).

An action that passes `env` gets exactly that environment, not even a PATH. Their tools are py_binaries whose
launchers need one: rules_python's default launcher starts with `#!/usr/bin/env python3` (connected mode) and a
remote worker runs the command with nothing else set. PATH is what --incompatible_strict_action_env gives Bazel's
own actions, so nothing leaks in from the user's shell and the action key is the same on every machine.
"""

ACTION_PATH = "/bin:/usr/bin:/usr/local/bin"

def python_action_env(extra = {}):
    """PATH, a UTF-8 locale and no .pyc writes, plus `extra` (which wins)."""
    env = {
        "LC_ALL": "C.UTF-8",
        "PATH": ACTION_PATH,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.update(extra)
    return env
