"""The officials' web console: pages and JSON API, session cookie + CSRF."""
