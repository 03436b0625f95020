"""The Hydra application shell around the library: one run = validate -> load -> capture -> rank ->
edit -> evaluate -> record.

    run.py        Hydra entry (`python -m headpursuit`, `headpursuit`): the stages in order
    schema.py     the run config's dataclasses (every key, its type, its one default) in Hydra's ConfigStore
    result_neutral.py  the config keys that do not change results (resume hash, W&B run name)
    config.py     validate_config -> the typed AppConfig / resolve_k: fail fast, naming the config key
    preflight.py  preflight(): the checks that need no weights (device, cache_dir, data, concept, ranking.somp_steps)
    interrupts.py SIGTERM / SIGINT -> JobInterrupted(signal, stage): recorded as status=interrupted
    cache.py      RunCache: a disk cache shared by the jobs of a sweep; cache keys
    stages.py     the cached stages (model, task, ranking samples, capture, rank, evaluate)
    record.py     record(): the results.json dict
    tracking.py   atomic results files, resume records, the fail-fast flag, heartbeat, provenance, W&B
    aggregate.py  `python -m headpursuit.app.aggregate DIR`: a sweep's results -> tables + plots
    plots.py      score heat maps, metric-vs-k curves

The library (everything outside app/) never imports from here. This file imports nothing, so that
`python -m headpursuit.app.aggregate` runs without loading the rest of the shell.
"""
