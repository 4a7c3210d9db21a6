"""LightningModules (training logic only), the nn.Modules they hold, losses and the training CLI.

Filled by the training-CLI, A2E and renderer issues; they load the face model from
``preprocess.face_model`` and never copy it.
"""
