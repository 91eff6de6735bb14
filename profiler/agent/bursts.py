"""Recording in bursts (`--burst`): the sampling ratio's share of the time, with every event
switched off in between.

Sampling per trace decides at each root, so a dropped trace still costs a callback per
traced coroutine call (README, "What it costs an app"). In burst mode the agent records
everything for `burst` seconds, then switches its events off until the next burst starts,
`burst_every` seconds after this one did: between bursts the app runs as if we were not
there, but for the sender thread's ticks (sender.PAUSED_TICK apart). A burst starts with the
attach.

At a burst's end the spans still open are cut: the sampled ones are shipped in flight (as
at detach: state running or blocked) and forgotten; their coroutines go on, and the next
burst adopts those still running when they resume (start unknown). The sender thread
drives the switches (`tick`), so no thread is added to the target.
"""

from __future__ import annotations

from .monitoring import Installation
from .settings import AgentSettings
from .tracker import Tracker

__all__ = ["Bursts"]


class Bursts:
    """When the events are on, and the switching itself."""

    def __init__(self, settings: AgentSettings, installation: Installation, now: float) -> None:
        self._length = settings.burst
        self._every = settings.burst_every
        self._installation = installation
        self._tracker: Tracker = installation.tracker
        self.count = 1  # bursts started, this one included
        self.cut_spans = 0  # sampled spans still open at a burst's end
        self._started = now
        self._next = now + self._length

    @staticmethod
    def wanted(settings: AgentSettings) -> bool:
        """True if the settings ask for bursts (a burst shorter than their period)."""
        return 0 < settings.burst < settings.burst_every

    @property
    def recording(self) -> bool:
        """True while the events are on (the tracker is not paused)."""
        return not self._tracker.paused

    def until_next(self, now: float) -> float:
        """Seconds from `now` (time.monotonic) to the next switch, at least 0."""
        return max(0.0, self._next - now)

    def tick(self, now: float) -> None:
        """Switch the events off or on if it is time to (on the sender thread). The next
        switch is scheduled first: one that fails (raises, or finds the agent detached) is
        tried again a burst or a pause later, never in a loop."""
        if now < self._next:
            return
        tracker = self._tracker
        if self.recording:
            # The next burst starts a period after this one did; after a late tick (the
            # GIL was busy), a period after now rather than at once.
            self._next = max(self._started + self._every, now + self._every - self._length)
            if not self._installation.pause():
                return
            tracker.paused = True
            self.cut_spans += tracker.cut(tracker.now())
        else:
            self._next = now + self._length
            tracker.watching_since = tracker.now()  # adopted spans start there
            if not self._installation.resume():
                return
            tracker.paused = False
            self.count += 1
            self._started = now

    def stats(self) -> dict[str, object]:
        """For the STATS frame."""
        return {
            "recording": self.recording,
            "share": self._length / self._every,
            "count": self.count,
            "cut_spans": self.cut_spans,
        }
