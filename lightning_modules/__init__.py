"""LightningModules (training logic only), the nn.Modules they hold (``nets/``), losses (``losses/``),
the training CLI (``python -m lightning_modules``), MLflow tracking and run comparison.

They load the face model from ``preprocess.face_model`` and never copy it.
"""
