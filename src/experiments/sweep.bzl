"""A sweep: several fine-tuning configurations as separate actions, gathered into one comparison table.

Each configuration is its own `finetuned_model` target, so Bazel schedules them as independent actions: with
remote execution they run on as many workers as are free, and each result is cached on its own (adding a
learning rate trains only the new one). `sweep_table` reads every run's metrics.json and writes
`<name>.md` and `<name>.json` (src/experiments/gather_sweep.py).
"""

load("//bazel/rules:action_env.bzl", "python_action_env")
load("//bazel/rules:finetune.bzl", "FinetunedModelInfo", "finetuned_model")

def _sweep_table_impl(ctx):
    markdown = ctx.actions.declare_file(ctx.label.name + ".md")
    table = ctx.actions.declare_file(ctx.label.name + ".json")
    args = ctx.actions.args()
    args.add("--markdown", markdown)
    args.add("--json", table)
    metrics = []
    for target, config_name in ctx.attr.runs.items():
        info = target[FinetunedModelInfo]
        metrics.append(info.metrics)
        args.add("--run", "%s=%s" % (config_name, info.metrics.path))
    ctx.actions.run(
        executable = ctx.executable.gather,
        arguments = [args],
        inputs = metrics,
        outputs = [markdown, table],
        env = python_action_env(),
        mnemonic = "GatherSweep",
        progress_message = "Gathering %d runs into %s" % (len(metrics), markdown.short_path),
    )
    return [DefaultInfo(files = depset([markdown, table]))]

sweep_table = rule(
    implementation = _sweep_table_impl,
    doc = "One comparison table (Markdown and JSON) of several finetuned_model runs.",
    attrs = {
        "runs": attr.label_keyed_string_dict(
            mandatory = True,
            providers = [FinetunedModelInfo],
            doc = "finetuned_model targets -> the configuration name shown in the table.",
        ),
        "gather": attr.label(
            default = "//src/experiments:gather_sweep",
            executable = True,
            cfg = "exec",
            doc = "The program that writes the table.",
        ),
    },
)

def finetune_sweep(
        name,
        data,
        learning_rates = [],
        configs = {},
        train_args = [],
        base_model = None,
        config = None,
        precision = "fp32",
        threads = 1,
        tags = [],
        visibility = None):
    """One finetuned_model per configuration, plus `name`: their comparison table.

    Defines `<name>_<config>` for every configuration (e.g. `lr_sweep_lr_1e-4`) and `<name>`, the table
    (`bazel build //pkg:<name>` trains every configuration not already cached, in parallel where Bazel can).

    Args:
      name: the table's target name; configuration targets are prefixed with it.
      data: as finetuned_model's data.
      learning_rates: strings such as "1e-4"; each becomes a configuration `lr_<value>` with --learning_rate.
      configs: more configurations, {config name: [trainer flags]}.
      train_args: flags shared by every configuration (before each configuration's own flags).
      base_model: as finetuned_model's base_model.
      config: as finetuned_model's config.
      precision: as finetuned_model's precision.
      threads: OMP_NUM_THREADS of each training action (see finetuned_model).
      tags: of every target, e.g. ["manual"].
      visibility: of every target.
    """
    runs = {}
    for lr in learning_rates:
        if type(lr) != "string":
            fail("learning_rates must be strings such as \"1e-4\" (exact in target names and flags), got %r" % (lr,))
        runs["lr_" + lr] = ["--learning_rate=" + lr]
    for config_name, flags in configs.items():
        if config_name in runs:
            fail("configuration %r is given twice (configs and learning_rates)" % config_name)
        runs[config_name] = flags
    if not runs:
        fail("finetune_sweep %s: give learning_rates or configs" % name)

    table_runs = {}
    for config_name, flags in runs.items():
        target = "%s_%s" % (name, config_name)
        finetuned_model(
            name = target,
            data = data,
            base_model = base_model,
            config = config,
            train_args = train_args + flags,
            precision = precision,
            threads = threads,
            tags = tags,
            visibility = visibility,
        )
        table_runs[":" + target] = config_name
    sweep_table(
        name = name,
        runs = table_runs,
        tags = tags,
        visibility = visibility,
    )
