"""Losses: nn.Modules returning (total, {log key: value})."""
