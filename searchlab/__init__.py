"""searchlab: hyperparameter search for PyTorch, tracked in MLflow.

A study file declares a :class:`Study`; ``searchlab run FILE`` (or ``python FILE``) searches it with Optuna and
records every trial in MLflow. Importing this package is light: torch, Optuna and MLflow load when a study runs.
"""

from searchlab.errors import ConfigError
from searchlab.registry import load_model
from searchlab.space import Choice, Fixed, Float, Int, default_space
from searchlab.study import Split, Study
from searchlab.trial import Trial

__all__ = ["Choice", "ConfigError", "Fixed", "Float", "Int", "Split", "Study", "Trial", "default_space", "load_model"]
