"""The service catalogue: its file format (`schema`), publishing and export (`publish`), what routes
and the bot read (`reader`), and the search engine over the published items (`search`).

`search` is an engine and imports nothing of this package; `reader` builds it from published items.
"""

# re-exported until importers move to the submodules
from handlers.catalog.publish import DEMO_CATALOGUE, export_catalogue, load_catalogue_file
from handlers.catalog.reader import CatalogueReader
from handlers.catalog.schema import CatalogueError

__all__ = ["DEMO_CATALOGUE", "CatalogueError", "CatalogueReader", "export_catalogue", "load_catalogue_file"]
