"""One module per webhook behaviour."""
