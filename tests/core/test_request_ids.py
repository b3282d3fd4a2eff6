"""Request ids made by the server: unique within a process and across forked workers."""

from __future__ import annotations

import os
import re

from core.http import new_request_id


def test_ids_are_32_hex_digits_and_never_repeat_in_a_process():
    made = [new_request_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in made)
    assert len(set(made)) == len(made)


def test_a_forked_child_draws_its_own_prefix():
    parent = new_request_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, back through the pipe
        try:
            os.write(write, new_request_id().encode())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert re.fullmatch(r"[0-9a-f]{32}", child)
    assert child[:16] != parent[:16]  # a forked worker numbering from the same prefix would repeat ids
    assert child != parent
