"""Settings of the two commands by preset, data set and model, as one table.

``"paper"`` holds the values of the paper's Appendix C; ``"demo"`` sizes the runs
on scikit-learn's digits for a laptop's CPU. The commands read their parser
defaults from here (:func:`deep_rfm_settings`, :func:`network_settings`) and the
documentation build renders the same table into the user guide
(:func:`render_rst`), so that no value is typed twice.
"""

DATASETS = ("digits", "mnist", "cifar10", "svhn")
PRESETS = ("demo", "paper")

#: Deep RFM (``python -m skdnc``). A value given as a dict depends on the
#: feature map. Appendix C: Laplace kernel, but the Gaussian one for ReLU on
#: MNIST; bandwidth 2; ridgeless solve; ReLU width 1024; random Fourier features
#: of the l1-Laplace kernel with sigma 0.05 and 4,096 features; the first 50,000
#: training points; every training point enters each AGOP, as in the paper's code;
#: float64. The demo computes in float32 (about twice as fast on a CPU), at a
#: width of 256 on digits, where NC2 falls (at 128 it stalls near 1).
DEEP_RFM = {
    "paper": {
        "n_samples": 50_000,
        "kernel": {"relu": "laplace", "cos": "laplace"},
        "bandwidth": 2.0,
        "reg": 0.0,
        "width": {"relu": 1024, "cos": 4096},
        "gamma": 0.05,
        "agop_samples": 1.0,
        "dtype": "float64",
    },
    "demo": {
        "n_samples": 5000,
        "kernel": "laplace",
        "bandwidth": 2.0,
        "reg": 1e-3,
        "width": {"relu": 1024, "cos": 4096},
        "gamma": 0.05,
        "agop_samples": None,
        "dtype": "float32",
    },
}
#: Per data set, what differs from the preset's row above.
DEEP_RFM_BY_DATASET = {
    ("paper", "mnist"): {"kernel": {"relu": "gaussian", "cos": "laplace"}},
    ("demo", "digits"): {"n_samples": None, "width": 256, "agop_samples": 500},
}

#: Networks (``python -m skdnc.nn``). Appendix C: SGD with batch 128 and MSE,
#: width 512, 5 bias-free hidden layers, metrics every 10 epochs, 3 seeds, the
#: first 50,000 training points; per architecture the epochs, momentum,
#: learning rate and init scale of the hidden layers (0.2 on MNIST for the MLP
#: and VGG).
NETWORK = {
    "paper": {
        "n_samples": 50_000,
        "width": 512,
        "depth": 5,
        "batch_size": 128,
        "measure_every": 10,
        "seeds": [0, 1, 2],
    },
    "demo": {
        "n_samples": 500,
        "width": 128,
        "depth": 5,
        "batch_size": 128,
        "measure_every": 10,
        "seeds": [0, 1],
    },
}
NETWORK_BY_ARCH = {
    ("paper", "mlp"): {"epochs": 500, "momentum": 0.0, "lr": 0.05, "init_scale": 0.3},
    ("paper", "resnet18"): {
        "epochs": 300,
        "momentum": 0.0,
        "lr": 0.05,
        "init_scale": 0.2,
    },
    ("paper", "vgg11"): {"epochs": 600, "momentum": 0.9, "lr": 0.01, "init_scale": 0.3},
    ("demo", "mlp"): {"epochs": 200, "momentum": 0.0, "lr": 0.4, "init_scale": 0.5},
    ("demo", "resnet18"): {
        "epochs": 200,
        "momentum": 0.0,
        "lr": 0.05,
        "init_scale": 0.2,
    },
    ("demo", "vgg11"): {"epochs": 200, "momentum": 0.9, "lr": 0.01, "init_scale": 0.3},
}
#: MNIST's smaller init scale (Appendix C) for the MLP and VGG.
NETWORK_BY_DATASET = {
    ("paper", "mnist", "mlp"): {"init_scale": 0.2},
    ("paper", "mnist", "vgg11"): {"init_scale": 0.2},
}


def default_preset(command, dataset):
    """The preset a command uses when none is asked for: ``"demo"``, but for the
    networks on the image data sets ``"paper"`` (a Deep RFM on 50,000 points
    needs a GPU; the demo preset keeps it to 5,000)."""
    return "paper" if command == "nn" and dataset != "digits" else "demo"


def deep_rfm_settings(preset, dataset, feature_map):
    """The Deep RFM settings of a preset for a data set and a feature map.

    Returns
    -------
    settings : dict
        ``n_samples``, ``kernel``, ``bandwidth``, ``reg``, ``width``, ``gamma``,
        ``agop_samples`` (``None``: the estimator's default number of points;
        ``1.0``: all of them) and ``dtype``.
    """
    row = {**DEEP_RFM[preset], **DEEP_RFM_BY_DATASET.get((preset, dataset), {})}
    return {k: v[feature_map] if isinstance(v, dict) else v for k, v in row.items()}


def network_settings(preset, dataset, arch):
    """The training settings of a preset for a data set and an architecture."""
    return {
        **NETWORK[preset],
        **NETWORK_BY_ARCH[(preset, arch)],
        **NETWORK_BY_DATASET.get((preset, dataset, arch), {}),
    }


def describe(settings, key, models, show=str):
    """What the presets set an option to, for the option's help text.

    Parameters
    ----------
    settings : callable
        :func:`deep_rfm_settings` or :func:`network_settings`.
    key : str
        The setting.
    models : sequence of str
        Feature maps or architectures; the first is the demo's.
    show : callable, default=str
        Writes a value.

    Returns
    -------
    text : str
        ``"(demo <model> on digits: <value>; paper: <values>)"``; the paper's
        values are given once when they agree, else per model, with the data sets
        that differ from the model's most common value.
    """
    demo = show(settings("demo", "digits", models[0])[key])
    paper = {
        model: {d: show(settings("paper", d, model)[key]) for d in DATASETS[1:]}
        for model in models
    }
    values = [v for by_dataset in paper.values() for v in by_dataset.values()]
    if len(set(values)) == 1:
        shown = values[0]
    else:
        parts = []
        for model, by_dataset in paper.items():
            values = list(by_dataset.values())
            common = max(values, key=values.count)  # the first on ties
            odd = [f"{v} on {d}" for d, v in by_dataset.items() if v != common]
            parts.append(f"{model} {common}" + (f" ({', '.join(odd)})" if odd else ""))
        shown = ", ".join(parts)
    return f"(demo {models[0]} on digits: {demo}; paper: {shown})"


def _table(header, rows):
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header, *rows]:
        lines.append(f"   * - {row[0]}")
        lines.extend(f"     - {cell}" for cell in row[1:])
    return "\n".join(lines) + "\n"


def _cell(value, key=None):
    if value is None:
        return "all" if key == "n_samples" else "default"
    if isinstance(value, float) and value == 1.0:
        return "all"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return f"{value:,}" if isinstance(value, int) and value >= 10_000 else str(value)


def render_rst():
    """The presets as reStructuredText tables, for the user guide."""
    keys = (
        "n_samples",
        "kernel",
        "bandwidth",
        "reg",
        "width",
        "gamma",
        "agop_samples",
        "dtype",
    )
    rows = []
    for preset in PRESETS:
        for dataset in DATASETS:
            if preset == "paper" and dataset == "digits":
                continue
            for feature_map in ("relu", "cos"):
                s = deep_rfm_settings(preset, dataset, feature_map)
                rows.append(
                    [preset, dataset, feature_map, *(_cell(s[k], k) for k in keys)]
                )
    deep = _table(["preset", "data set", "map", *keys], rows)
    keys = ("epochs", "lr", "momentum", "init_scale", "width", "n_samples", "seeds")
    rows = []
    for preset in PRESETS:
        for dataset in ("digits",) if preset == "demo" else DATASETS[1:]:
            for arch in ("mlp", "resnet18", "vgg11"):
                s = network_settings(preset, dataset, arch)
                rows.append([preset, dataset, arch, *(_cell(s[k]) for k in keys)])
    networks = _table(["preset", "data set", "arch", *keys], rows)
    return (
        "``python -m skdnc`` (Deep RFM):\n\n"
        + deep
        + "\n``python -m skdnc.nn`` (networks; SGD, batch 128, MSE, 5 bias-free "
        "hidden layers, metrics every 10 epochs):\n\n" + networks
    )
