"""The schedule of a training run: how many epochs it trains (:class:`_Plan`, planned from
the time limit once the warm-up has run) and the learning rate of each step (a warm-up,
then one cosine or, in live training, cosine cycles with warm restarts, held at their floor
while the user's picks stay as they are). See :mod:`.train`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .train import TrainConfig


class _Plan:
    """How many epochs a run trains: ``config.epochs``, or with a time limit as many as fit.

    The count is planned once, after the warm-up epochs (whose learning rates do not
    depend on it), from the last one's measured time (training and validation), so the
    cosine schedule that follows is a function of the step alone and a run can be
    repeated exactly with ``epochs`` set to the planned count (8 or more) and no time limit. It is
    planned again only if the median epoch since then says the run will end a whole epoch
    late (the machine got busier) or 2.5 epochs early; the time limit itself still stops a
    run at once."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.warm_epochs = max(1, min(int(config.warmup_epochs), config.epochs // 4))
        self.epochs = config.epochs
        self.planned = not config.time_limit
        self.last_elapsed = 0.0
        # live training: the cosine cycles so far, (first step after the warm-up, steps, peak,
        # the first step whose news counts for it), and the steps (after the warm-up) at
        # which the user's picks changed
        self._lr_cycles: list[tuple[int, int, float, int]] = []
        self._news: list[int] = []

    def warmup_steps(self) -> int:
        """Whole warm-up epochs, so a timed run plans after them; a short run (under
        4 x warmup_epochs) warms up over its first 5 % of steps instead, as all runs did
        before session 9."""
        c = self.config
        if c.time_limit or c.epochs >= 4 * max(1, int(c.warmup_epochs)):
            return self.warm_epochs * c.steps_per_epoch
        return max(1, round(0.05 * c.epochs * c.steps_per_epoch))

    @property
    def total_steps(self) -> int:
        return max(1, self.epochs * self.config.steps_per_epoch)

    def after_epoch(self, done: int, elapsed: float) -> None:
        """Called once an epoch (with its validation) is over, ``elapsed`` seconds into the run."""
        limit = self.config.time_limit
        seconds = elapsed - self.last_elapsed  # the whole cycle: training, validation, saving
        self.last_elapsed = elapsed
        if not limit:
            return
        if not self.planned:
            if done < self.warm_epochs:
                return
            # 3 % of the time left to spare, so that the clock's jitter does not cut the last epoch
            self.epochs = min(self.config.epochs, done + max(0, int(0.97 * (limit - elapsed) / max(seconds, 1e-6))))
            self.planned, self.cycles = True, [seconds]
            return
        # the median epoch since the plan (3 or more), so that a one-off pause (self-labelling,
        # a save, another program for a moment) does not shorten the whole run: seen, one
        # 34-s epoch among 23-s ones re-planned 31 epochs down to 25 when the mean was used
        self.cycles.append(seconds)
        if len(self.cycles) < 3:
            return
        typical = max(float(np.median(self.cycles)), 1e-6)
        end = elapsed + (self.epochs - done) * typical
        # a whole epoch late: fewer epochs; 2.5 early (the planning epoch was slow): more
        if end > limit + typical or (end < limit - 2.5 * typical and self.epochs < self.config.epochs):
            self.epochs = min(self.config.epochs, done + max(0, int(0.97 * (limit - elapsed) / typical)))

    def note_news(self, s: int, warmup: int) -> None:
        """Live training: the user's picks changed (clicks, deletions, answers) before step ``s``."""
        self._news.append(s - warmup)

    def _live_cycle(self, into: int) -> tuple[float, float]:
        """The peak and the position (0..1) in its cosine of step ``into`` after the warm-up.

        Each cycle is twice as long as the one before and starts from half its peak. With
        ``settle``, a cycle during which the picks did not change is not followed by another:
        the rate stays at the floor, so the network settles instead of being shaken up again
        with nothing new to learn, until the picks change (the next cycle starts then).
        Steps must be asked for in order (the record's one step back is fine)."""
        c = self.config
        cycles = self._lr_cycles
        if not cycles:  # (start, steps, peak, first step whose news counts for it)
            cycles.append((0, max(1, int(c.cycle_epochs)) * c.steps_per_epoch, 1.0, -(1 << 62)))
        while into >= cycles[-1][0] + cycles[-1][1]:
            start, period, peak, since = cycles[-1]
            end = start + period
            if not c.settle or any(since <= t < end for t in self._news):
                cycles.append((end, 2 * period, peak * c.cycle_decay, end))
                continue
            later = [t for t in self._news if t >= end]
            if not later or min(later) > into:
                break  # holding at the floor
            # the news that starts a cycle is the one it learns: later news counts for it
            cycles.append((min(later), 2 * period, peak * c.cycle_decay, min(later) + 1))
        for start, period, peak, _ in reversed(cycles):
            if into >= start:
                return peak, min(1.0, (into - start) / period)
        return cycles[0][2], 0.0

    def lr_at(self, s: int, warmup: int) -> float:
        """The learning rate of step ``s`` (``warmup``: :meth:`warmup_steps`): linear from 10 %
        over the warm-up, then a cosine down to 3 % at the planned last step; live training
        (``continuous``) runs cosine cycles instead (:meth:`_live_cycle`)."""
        config = self.config
        if s < warmup:
            return config.lr * (0.1 + 0.9 * s / warmup)
        peak = 1.0
        if config.continuous:
            peak, q = self._live_cycle(s - warmup)
        else:
            q = (s - warmup) / max(1, self.total_steps - warmup)
        return config.lr * peak * (0.03 + 0.97 * 0.5 * (1 + math.cos(math.pi * min(1.0, q))))
