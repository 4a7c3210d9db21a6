"""``python -m lightning_modules evaluate``: A2E -> renderer on test shards, scored as the paper's Table 2."""
