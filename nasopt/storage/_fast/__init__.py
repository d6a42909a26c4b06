"""The fast path: Optuna's RDB tables written and read in SQLAlchemy Core with writes held per trial.
Fenced: the only importer of `optuna.storages._*`, used only on the Optuna releases it was verified on
(`VERIFIED_OPTUNA`); elsewhere Optuna's own storage classes run.
"""

