"""The A2E stage (audio -> 3DMM expression): LightningModule, transformer, loss, sliding-window
inference, the mouth-opening plot, the linear reference and the bench."""
