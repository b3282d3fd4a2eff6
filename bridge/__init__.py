"""Core-platform adapter (signed HTTP) and a runnable platform simulator."""
