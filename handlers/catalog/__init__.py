"""The service catalogue: its file format (`schema`), publishing and export (`publish`), what routes
and the bot read (`reader`), and the search engine over the published items (`search`).

`search` is an engine and imports nothing of this package; `reader` builds it from published items.
"""
