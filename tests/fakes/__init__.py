"""Local servers that speak real APIs, for tests."""
