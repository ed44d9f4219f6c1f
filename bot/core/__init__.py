"""Pure functions over plain data: no network, no environment, no clock, no files."""
