"""Plain nn.Modules the LightningModules hold (injected through their typed __init__ arguments)."""
