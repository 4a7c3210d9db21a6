"""The renderer stage (expression -> face): GAN LightningModule, FIA generator, patch critic, losses,
image grids and the bench."""
