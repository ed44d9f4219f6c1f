"""Real implementations of the ports: the only code that does I/O."""
