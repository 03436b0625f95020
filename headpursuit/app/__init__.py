"""The Hydra application shell around the library: one run = validate -> load -> capture -> rank ->
edit -> evaluate -> record.

    run.py        Hydra entry (`python -m headpursuit`, `headpursuit`): the stages in order
    config.py     validate_config / resolve_k: fail fast, naming the config key
    preflight.py  preflight(): the checks that need no weights (device, cache_dir, data, concept, ranking.k)
    interrupts.py SIGTERM / SIGINT -> JobInterrupted(signal, stage): recorded as status=interrupted
    cache.py      RunCache: a disk cache shared by the jobs of a sweep; cache keys
    stages.py     the cached stages (model, task, ranking samples, capture, rank, evaluate)
    results.py    RunRecord: results.json as one type (schema version, writer, reader), resume, error records
    record.py     record(): what a run measured (the record's outcome), from the stages' outputs
    tracking.py   atomic files, the fail-fast flag, heartbeat, provenance, W&B
    aggregate.py  `python -m headpursuit.app.aggregate DIR`: a sweep's results -> tables + plots
    plots.py      score heat maps, metric-vs-k curves

The library (everything outside app/) never imports from here. This file imports nothing, so that
`python -m headpursuit.app.aggregate` runs without loading the rest of the shell.
"""
