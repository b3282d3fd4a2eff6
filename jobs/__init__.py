"""Background jobs on taskiq, one module per domain, wired at the edge like the HTTP routes.

- `broker`: the broker (in-memory on the embedded default, a Redis stream in production) and
  the scheduler;
- `cases`, `push`, `drafts`, `ops`: each domain's tasks, thin calls into its use cases;
- `kicks`: the `core.kicks.Kicks` that queue those tasks, handed to use cases through the
  service container;
- `worker`: what a worker process builds at start (the container) and closes at stop; the
  module `python server.py worker` points taskiq at, and which imports every task module.
"""
