"""LightningModules, one package per stage or concern (``a2e/``, ``renderer/``, ``evaluation/``,
``tracking/``), each holding its module, networks, loss, plots and bench; the training CLI
(``python -m lightning_modules``) and the helpers both stages share (``hparams``, ``stage_metrics``).

They load the face model from ``preprocess.face_model`` and never copy it.
"""
