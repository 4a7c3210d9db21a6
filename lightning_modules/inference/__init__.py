"""Trained A2E + renderer applied to raw media: ``dub`` (a video and a voice in, an mp4 out), ``stream``
(:class:`~lightning_modules.inference.session.RealtimeSession`, live audio in pieces) and ``export`` (ONNX)."""
