"""The Hydra application shell around the library: one run = validate -> load -> capture -> rank ->
edit -> evaluate -> record.

    run.py        Hydra entry (`python -m headpursuit`, `headpursuit`): the stages in order
    schema.py     the run config's dataclasses (every key, its type, its one default) in Hydra's ConfigStore
    result_neutral.py  the config keys that do not change results (resume hash, W&B run name)
    config.py     validate_config -> the typed AppConfig / resolve_k: fail fast, naming the config key
    preflight.py  preflight(): the checks that need no weights (device, cache_dir, data, concept, ranking.somp_steps)
    interrupts.py SIGTERM / SIGINT -> JobInterrupted(signal, stage): recorded as status=interrupted
    cache.py      RunCache: the library's store plus the per-stage hits; the identities keys hold
    stages.py     the cached stages (model, task, ranking samples, capture, rank, evaluate)
    results.py    RunRecord: results.json as one type (schema version, writer, reader), resume, error records
    record.py     record(): what a run measured (the record's outcome), from the stages' outputs
    tracking.py   the facade: every name the rooms below (and results.py) export still imports from it
    files.py      atomic writes, read_json, the run-dir lock, a full disk
    liveness.py   heartbeat, running_state, the fail-fast flag
    tracker.py    the W&B mirror and flatten_metrics
    environment.py versions, git, host (provenance)
    timer.py      the seconds and the name of each stage
    aggregate.py  `python -m headpursuit.app.aggregate DIR`: a sweep's results -> tables + plots
    plots.py      score heat maps, metric-vs-k curves

The library (everything outside app/) never imports from here. This file imports nothing, so that
`python -m headpursuit.app.aggregate` runs without loading the rest of the shell.
"""
