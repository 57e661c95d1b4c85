"""Importers: run records from where teams already keep them (MLflow tracking stores, Optuna studies)."""
