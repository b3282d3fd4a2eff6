"""Citizens' materials: the image/PDF pipeline engine (`pipeline`: bytes in, bytes out), signed
file links (`links`) and the use cases on them (`service`): upload, library, viewing and download,
deletion, locking for a submitted case, review of a draft's attachments, officials' copies.
"""

# re-exported until importers move to the submodules
from handlers.materials.links import platform_links
from handlers.materials.service import Materials, Pipeline, lock_for_case, review_attached

__all__ = ["Materials", "Pipeline", "lock_for_case", "platform_links", "review_attached"]
