"""Mendbot: diagnoses failed CI runs and posts the answer where people look."""
