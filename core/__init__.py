"""Cross-cutting plumbing shared by every part: settings, errors, HTTP conventions, logging, jobs."""
