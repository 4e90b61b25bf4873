"""Repository rules for offline mode: a local venv as the Python toolchain and as @pypi.

The venv is built from bazel_requirements_lock.txt by tools/setup.sh at a
fixed path (outside /tmp, so that action keys, which contain the interpreter
path, are the same on every machine and a shared remote cache hits).
Override the location with the environment variable CPU_FINETUNE_VENV.
"""

DEFAULT_VENV = "/opt/cpu-finetune/venv"
_VENV_ENV = "CPU_FINETUNE_VENV"

def _venv_dir(rctx):
    return rctx.os.environ.get(_VENV_ENV, DEFAULT_VENV)

def _python(rctx):
    python = rctx.path(_venv_dir(rctx) + "/bin/python3")
    if not python.exists:
        fail("offline mode: no Python venv at %s; create it with tools/setup.sh (or set %s)" % (_venv_dir(rctx), _VENV_ENV))
    return python

def _venv_python_impl(rctx):
    python = _python(rctx)
    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.name)
    rctx.file("BUILD", """\
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

py_runtime(
    name = "py3_runtime",
    interpreter_path = "{python}",
    python_version = "PY3",
    stub_shebang = "#!{python}",
)

py_runtime_pair(
    name = "runtime_pair",
    py3_runtime = ":py3_runtime",
)

toolchain(
    name = "toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
""".format(python = python))

venv_python = repository_rule(
    implementation = _venv_python_impl,
    environ = [_VENV_ENV],
    local = True,
    doc = "A py_runtime toolchain whose interpreter is the venv's python3.",
)

def _normalize(name):
    # rules_python's hub naming: lower case, runs of -_. become one _.
    out = []
    for c in name.lower().elems():
        if c in "-_.":
            if not out or out[-1] != "_":
                out.append("_")
        else:
            out.append(c)
    return "".join(out)

def _locked_versions(lock_text):
    """Returns {normalized name: version} for every `name==version` line of the lock."""
    pins = {}
    for line in lock_text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.startswith("--") or "==" not in line:
            continue
        req = line.split(" ")[0].split(";")[0]
        name, version = req.split("==", 1)
        pins[_normalize(name.split("[")[0])] = version
    return pins

_INSTALLED = """\
import importlib.metadata as m, re
for d in m.distributions():
    print(re.sub(r"[-_.]+", "_", d.metadata["Name"].lower()) + "==" + d.version)
"""

def _venv_pypi_impl(rctx):
    python = _python(rctx)
    pins = _locked_versions(rctx.read(rctx.attr.requirements_lock))
    result = rctx.execute([python, "-c", _INSTALLED])
    if result.return_code != 0:
        fail("offline mode: could not list the venv's packages: " + result.stderr)
    installed = {}
    for line in result.stdout.splitlines():
        name, version = line.split("==", 1)
        installed[name] = version

    mismatches = []
    for name, version in sorted(pins.items()):
        if installed.get(name) != version:
            mismatches.append("%s==%s (venv: %s)" % (name, version, installed.get(name, "missing")))
    if mismatches:
        fail("offline mode: the venv at %s does not match bazel_requirements_lock.txt: %s. Re-run tools/setup.sh." % (
            _venv_dir(rctx),
            ", ".join(mismatches),
        ))

    # Every package depends on this file, so any change of the venv's locked
    # packages changes the inputs of every Python action and test.
    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.name)
    rctx.file("venv_versions.txt", "".join(["%s==%s\n" % (n, v) for n, v in sorted(pins.items())]))
    rctx.file("BUILD", 'exports_files(["venv_versions.txt"])\n')
    for name in pins:
        rctx.file(name + "/BUILD", """\
# {name}=={version}, provided by the venv's site-packages (offline mode).
py_library(
    name = "{name}",
    data = ["//:venv_versions.txt"],
    visibility = ["//visibility:public"],
)

alias(
    name = "pkg",
    actual = ":{name}",
    visibility = ["//visibility:public"],
)
""".format(name = name, version = pins[name]))

venv_pypi = repository_rule(
    implementation = _venv_pypi_impl,
    attrs = {
        "requirements_lock": attr.label(allow_single_file = True, mandatory = True),
    },
    environ = [_VENV_ENV],
    local = True,
    doc = "A @pypi hub like rules_python's pip.parse, whose packages come from the venv.",
)
