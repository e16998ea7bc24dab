"""Authentication: who may call the API, and with what credential."""
