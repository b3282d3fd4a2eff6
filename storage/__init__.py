"""Persistence: Tortoise models and migrations, Redis, files, field encryption."""
