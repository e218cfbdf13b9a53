"""nodes/state_table.py: id -> slot lookup, slot reuse, capacity, and the save/restore round trip."""

from __future__ import annotations

import numpy as np
import pytest

from nodes.state_table import NEVER, AgentTable


def _table(capacity: int = 4) -> AgentTable:
    return AgentTable(capacity, n_state=2, layers=1, hidden=3, hist_len=5)


def test_known_ids_keep_their_slots_and_new_ids_take_the_lowest_free_ones() -> None:
    tab = _table()
    slots, new = tab.slots_for(np.array([70, 5, 12]))
    assert slots.tolist() == [0, 1, 2] and new.all()
    slots, new = tab.slots_for(np.array([12, 9, 70]))
    assert slots.tolist() == [2, 3, 0] and new.tolist() == [False, True, False]
    assert len(tab) == 4 and tab.ids.tolist() == [70, 5, 12, 9]


def test_ids_beyond_capacity_get_no_slot_and_the_rest_are_served() -> None:
    tab = _table(capacity=2)
    slots, new = tab.slots_for(np.array([1, 2, 3]))
    assert slots.tolist() == [0, 1, -1] and new.all()
    slots, new = tab.slots_for(np.array([3, 2]))
    assert slots.tolist() == [-1, 1] and new.tolist() == [True, False]


def test_a_freed_slot_is_reused_first_and_starts_from_zero() -> None:
    tab = _table()
    tab.slots_for(np.array([1, 2, 3]))
    tab.state[:] = 1.0
    tab.n_obs[:], tab.last_k[:] = 7, 3
    tab.free(np.array([1]))
    assert len(tab) == 2 and tab.ids[1] == -1
    slots, new = tab.slots_for(np.array([8, 3]))
    assert slots.tolist() == [1, 2] and new.tolist() == [True, False]
    assert not tab.state[:, :, 1].any() and tab.n_obs[1] == 0 and tab.last_k[1] == NEVER
    assert tab.state[:, :, 2].all() and tab.n_obs[2] == 7   # the known agent keeps its state


def test_restore_rebuilds_the_lookup_and_the_free_slots() -> None:
    tab = _table()
    tab.slots_for(np.array([40, 41, 42]))
    tab.free(np.array([0]))
    tab.hist[2] = 9.0
    saved = tab.arrays("m.")
    back = _table()
    back.restore(saved, "m.")
    assert len(back) == 2
    slots, new = back.slots_for(np.array([42, 41, 50, 51]))
    assert slots.tolist() == [2, 1, 0, 3] and new.tolist() == [False, False, True, True]
    assert (back.hist[2] == 9.0).all()


def test_restore_refuses_repeated_slots() -> None:
    tab = _table()
    tab.slots_for(np.array([1, 2]))
    saved = tab.arrays("m.")
    saved["m.slots"] = np.array([0, 0])
    with pytest.raises(ValueError, match="repeat a slot"):
        _table().restore(saved, "m.")
