"""Dataset formats: how inputs are listed and where their labels come from."""
