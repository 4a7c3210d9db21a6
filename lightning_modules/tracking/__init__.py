"""MLflow tracking: the run logger (``run_logger``), what a run records (``run_record``), checkpoints and
their runs (``checkpoints``), and ``runs compare`` (``compare``)."""
