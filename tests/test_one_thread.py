"""one_thread: one intra-op thread inside the block, the count restored after (also on error),
and another Python thread's count left alone."""

from __future__ import annotations

import threading

import pytest
import torch

from weightspace.one_thread import one_thread


def test_one_thread_sets_one_thread_and_restores_the_count() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        seen = []
        with one_thread():
            seen.append(torch.get_num_threads())
        seen.append(torch.get_num_threads())
        with pytest.raises(ValueError), one_thread():
            raise ValueError("inside")
        seen.append(torch.get_num_threads())
        assert seen == [1, 2, 2]
    finally:
        torch.set_num_threads(before)


def test_one_thread_in_another_thread_leaves_this_one_alone() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        inside = []

        def other() -> None:
            with one_thread():
                inside.append(torch.get_num_threads())

        worker = threading.Thread(target=other)
        worker.start()
        worker.join(10)
        assert inside == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
