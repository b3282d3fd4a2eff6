"""Cases, from submission to result: everything between a citizen's application and the core platform.

- `lifecycle`: the table of allowed moves and `transition()`, the one function that applies it;
- `access`: who may see a case (its citizen; an official of the item's department);
- `views`: the citizen's list and detail (timeline, next action, promised date), an official's push log;
- `search`: an official's case search (keyset pages, CSV) and case view (masked unless revealed, audited);
- `withdrawal`, `resubmission`: what a citizen may do to a case;
- `outbox`: the transactional outbox and the relay that hands cases to the platform;
- `platform_events`: the platform's callbacks, applied once and never backwards;
- `sweeps`: silent cases looked up at the platform, overdue cases marked.
"""
