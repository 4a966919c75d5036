"""How a trial's end reaches Optuna: its value, pruned, or FAIL with its reason; never left RUNNING."""

from __future__ import annotations

import math
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from searchlab.budget import retry_trial
from searchlab.errors import ConfigError, TrialStopped, describe_error
from searchlab.objective import INTERRUPTED
from searchlab.settings import FAIL_REASON_ATTR
from searchlab.transfer import FrozenNotLoaded


def tell_stopped(study: optuna.Study, trial: optuna.Trial, error: BaseException) -> FrozenTrial:
    """Tell a trial that raised: PRUNED, or FAIL with its reason (Ctrl-C's, a stopped trial's or the error's). An
    interrupted trial (Ctrl-C, SIGTERM) is enqueued again first, whatever its retries: the next run resumes it."""
    if isinstance(error, optuna.TrialPruned):
        return study.tell(trial, state=TrialState.PRUNED)
    if isinstance(error, KeyboardInterrupt):
        reason = str(error) or INTERRUPTED
        retry_trial(study, study._storage.get_trial(trial._trial_id), math.inf)
    else:
        reason = str(error) if isinstance(error, TrialStopped) else describe_error(error)
    trial.set_user_attr(FAIL_REASON_ATTR, reason)
    return study.tell(trial, state=TrialState.FAIL)


def ends_the_search(error: BaseException) -> bool:
    """Bad input and Ctrl-C stop the worker once their trial is told; any other error fails only its trial, as does
    a frozen layer that this trial's params sized so that the starting weights do not fit it."""
    if isinstance(error, FrozenNotLoaded):
        return False
    return isinstance(error, ConfigError | KeyboardInterrupt) or not isinstance(error, Exception)


def run_trial(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], float]) -> FrozenTrial:
    """Run the objective on a claimed trial and tell the study how it ended; never leaves it RUNNING.

    A trial that raises is recorded FAIL with its reason; bad input and Ctrl-C also fail it, then propagate.
    """
    try:
        value = objective(trial)
    except (Exception, KeyboardInterrupt) as error:
        frozen = tell_stopped(study, trial, error)
        if ends_the_search(error):
            raise
        return frozen
    return study.tell(trial, value)
