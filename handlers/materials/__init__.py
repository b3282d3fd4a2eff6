"""Citizens' materials: the image/PDF pipeline engine (`pipeline`: bytes in, bytes out), signed
file links (`links`) and the use cases on them (`service`): upload, library, viewing and download,
deletion, locking for a submitted case, review of a draft's attachments, officials' copies.
"""
