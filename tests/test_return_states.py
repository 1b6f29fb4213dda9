"""The return state machine: allowed moves, audit trail."""

import pytest

from gateway.returns import JOURNEY, ReturnState, can_move


def test_journey_moves_forward_only() -> None:
    for i, a in enumerate(JOURNEY):
        for j, b in enumerate(JOURNEY):
            assert can_move(a, b) == (j > i), (a, b)


@pytest.mark.parametrize(
    ("current", "target", "allowed"),
    [
        (ReturnState.AUTHORIZED, ReturnState.CANCELLED, True),
        (ReturnState.AUTHORIZED, ReturnState.EXPIRED, True),
        (ReturnState.DROPPED_OFF, ReturnState.CANCELLED, False),
        (ReturnState.REVIEW, ReturnState.AUTHORIZED, True),
        (ReturnState.REVIEW, ReturnState.DROPPED_OFF, False),
        (ReturnState.IN_TRANSIT, ReturnState.EXCEPTION, True),
        (ReturnState.REFUNDED, ReturnState.EXCEPTION, False),
        (ReturnState.CANCELLED, ReturnState.EXCEPTION, True),
        (ReturnState.EXCEPTION, ReturnState.RECEIVED, False),
    ],
)
def test_side_exits(current: ReturnState, target: ReturnState, allowed: bool) -> None:
    assert can_move(current, target) is allowed
