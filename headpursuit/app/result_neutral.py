"""The run config keys that do not change a run's results: the one list.

The resume hash (`config_hash`) leaves them out, and so does the W&B run name (Hydra's
``override_dirname``, whose ``exclude_keys`` conf/config.yaml reads from this list through the
``${hp.result_neutral_keys:}`` resolver of `headpursuit.app.schema`). A module of its own, importing
nothing, so that the light parts of the shell (`aggregate`) read it without the library.
"""

from __future__ import annotations

__all__ = ["RESULT_NEUTRAL_KEYS", "LAUNCHER_GROUP"]

#: top-level keys of a run config: the tracker, where the cache lives, resume/fail-fast behaviour,
#: plots and the heartbeat
RESULT_NEUTRAL_KEYS = ("logger", "cache_dir", "resume", "fail_fast", "plots", "heartbeat_s")
#: Hydra's launcher group: where the jobs run, not what they compute
LAUNCHER_GROUP = "hydra/launcher"
