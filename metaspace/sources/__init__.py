"""Importers: run records from where teams already keep them (MLflow tracking stores, Optuna studies).

Importing this package imports neither MLflow nor Optuna: each importer loads its library when called.
"""

from metaspace.sources.common import SourceImportSummary
from metaspace.sources.mlflow import import_mlflow
from metaspace.sources.optuna import WarmStart, import_optuna, optuna_warm_start

__all__ = ["SourceImportSummary", "WarmStart", "import_mlflow", "import_optuna", "optuna_warm_start"]
