"""Partner node side: ClientApp, the partner's home directory, local (DP) training."""
