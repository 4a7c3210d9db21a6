"""torchmetrics Metric subclasses: the A2E lip-opening correlation now; LMD, FID / FD_effnet,
LPIPS, SSIM, CSIM and Sync with the metrics issue.
"""
