"""Per-member floors: the live messages a joiner already got in its history.

History is read on another connection than live delivery, so it can be ahead
of it: a member whose history reached seq N must not get messages up to N
again when they arrive live. The Hub tells :class:`Floors` how far each room's
live delivery got (:meth:`~Floors.delivered`) and where each join's history
ended (:meth:`~Floors.joined`); a member whose history is ahead of live
delivery gets a *floor*, and :meth:`~Floors.send_above` skips it for messages
at or below it. A floor goes once live delivery reaches it, when its member
leaves, and when the room's live stream had a gap (what was behind it is not
coming: the members resync).
"""

from __future__ import annotations

from .members import Member, PreparedMessage


class Floors:
    """This node's rooms' live positions and their members' floors."""

    __slots__ = ("_by_room", "_last_seq")

    def __init__(self) -> None:
        self._by_room: dict[str, dict[Member, int]] = {}
        self._last_seq: dict[str, int] = {}

    def delivered(self, room: str, seq: int) -> None:
        """Live delivery of ``room`` reached ``seq``."""
        self._last_seq[room] = seq

    def joined(self, room: str, member: Member, history_seq: int) -> None:
        """``member`` got ``room``'s history up to ``history_seq``."""
        if history_seq > self._last_seq.get(room, 0):
            # Live delivery is behind history: what history covered is still to come.
            self._by_room.setdefault(room, {})[member] = history_seq

    def any_in(self, room: str) -> bool:
        """Whether a member of ``room`` has a floor (if not, every member gets everything)."""
        return room in self._by_room

    def send_above(
        self, room: str, members: set[Member], seq: int, message: PreparedMessage
    ) -> int:
        """Send ``message`` to every member but those that got ``seq`` in their history.

        Only for a room where :meth:`any_in` is true. Returns how many it was sent to.
        """
        floors = self._by_room[room]
        sent = 0
        for member in members:
            floor = floors.get(member)
            if floor is None or seq > floor:
                member.send(message)
                sent += 1
        for member, floor in list(floors.items()):
            if seq >= floor:
                del floors[member]  # live delivery has caught up with its history
        if not floors:
            del self._by_room[room]
        return sent

    def drop(self, room: str, member: Member) -> None:
        """``member`` left ``room``."""
        floors = self._by_room.get(room)
        if floors is not None:
            floors.pop(member, None)
            if not floors:
                del self._by_room[room]

    def forget(self, room: str) -> None:
        """``room``'s live stream had a gap, or the node left the room: start afresh."""
        self._by_room.pop(room, None)
        self._last_seq.pop(room, None)
