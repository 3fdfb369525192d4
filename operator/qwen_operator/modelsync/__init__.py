"""modelsync package."""
