"""torchmetrics Metric subclasses (LMD, FID / FD_effnet, LPIPS, SSIM, CSIM, Sync).

Filled by the metrics issue.
"""
