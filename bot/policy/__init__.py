"""Decisions about what may happen, each with its reasons."""
