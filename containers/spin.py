"""When a replica busy-polls for its next batch instead of sleeping on the socket.

Spinning after a batch saves a sleep and a wakeup per round trip (tens of µs on
a virtual machine), but only on a core nobody else needs: a spinning replica
that shares its core with the frontend takes half of that core from the very
process that is preparing its next batch (measured: half the throughput). So:

- the manager, which knows the placement, tells a replica whether it owns its
  cores (``owns_cores``): ``True`` spins ``spin_us`` after each batch,
  ``False`` never spins;
- unknown (``None``: started by hand, or the frontend's cores are unknown)
  spins *adaptively*: a spin ends as soon as a ``sched_yield`` comes back late
  (another thread had work on this core), and spinning pauses while spins
  rarely find work, probing again now and then.
"""

from __future__ import annotations

from enum import Enum

CONTENDED_YIELD_NS = 100_000  # a yield this long: another process ran here (our own ZMQ I/O thread takes ~10 µs)
HIT_WEIGHT = 0.125  # weight of the newest spin in the running hit rate
MIN_HIT_RATE = 0.3  # below this, spinning pauses
PROBE_EVERY = 64  # while paused, every this many batches one spin measures again


class SpinMode(str, Enum):
    """How a replica decides to busy-poll after a batch."""

    PLACEMENT = "placement"  # as the manager says (owns_cores); adaptive when it says nothing
    ADAPTIVE = "adaptive"  # adaptive whatever the placement
    ALWAYS = "always"  # a fixed window after every batch
    NEVER = "never"


class SpinPolicy:
    """The spin decision of one replica's serving loop (not thread-safe: the serving thread owns it)."""

    def __init__(self, spin_us: int, mode: SpinMode | str = SpinMode.PLACEMENT,
                 owns_cores: bool | None = None) -> None:
        if not isinstance(spin_us, int) or spin_us < 0:
            raise ValueError(f"spin_us must be an integer >= 0, got {spin_us!r}")
        self.mode = SpinMode(mode)
        if self.mode is SpinMode.PLACEMENT:
            effective = {True: SpinMode.ALWAYS, False: SpinMode.NEVER, None: SpinMode.ADAPTIVE}[owns_cores]
        else:
            effective = self.mode
        self.effective = SpinMode.NEVER if spin_us == 0 else effective
        self.adaptive = self.effective is SpinMode.ADAPTIVE
        self.window_ns = spin_us * 1000 if self.effective is not SpinMode.NEVER else 0
        self.hit_rate = 1.0
        self._paused_batches = 0
        self.spins = self.hits = self.contended = 0

    def after_batch(self) -> int:
        """How long (ns) to spin after the batch that just ran; 0 = block on the socket at once."""
        if not self.adaptive or self.hit_rate >= MIN_HIT_RATE:
            return self.window_ns
        self._paused_batches += 1
        if self._paused_batches % PROBE_EVERY == 0:
            return self.window_ns
        return 0

    def ended(self, hit: bool, contended: bool = False) -> None:
        """Count one spin: ``hit`` if it found the next message, ``contended`` if a late yield ended it.

        A contended spin counts as a miss even when the message was there after the late
        yield: blocking would have got it as soon, without keeping this core runnable.
        """
        self.spins += 1
        self.hits += hit
        self.contended += contended
        self.hit_rate += HIT_WEIGHT * ((0.0 if contended or not hit else 1.0) - self.hit_rate)
