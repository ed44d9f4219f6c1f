"""Default classification rules, shipped as package data (default.toml)."""
