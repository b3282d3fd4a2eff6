"""Use cases, one module per domain. Handlers call storage, payments and bridge; never a transport layer."""
