"""torchmetrics Metric subclasses for evaluation (each reduces exactly across processes).

- :mod:`metrics.landmark_distance`: LMD / M-LMD / F-LMD on dlib 68-point landmarks;
- :mod:`metrics.identity_similarity`: CSIM on dlib's 128-d identity embeddings;
- :mod:`metrics.image_quality`: PSNR and SSIM, whole crop and redrawn region;
- :mod:`metrics.perceptual_similarity`: LPIPS (AlexNet or VGG16, weights from ``make weights`` or a path);
- :mod:`metrics.frechet_distance`: FID (TF Inception from ``make weights``) and FD_effnet (pip-shipped weights);
- :mod:`metrics.correlation`: the A2E lip-opening correlation;
- :mod:`metrics.expression_response`: how much a renderer's mouth moves with β (validation).
"""
