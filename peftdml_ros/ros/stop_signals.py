"""SIGINT and SIGTERM as one clean stop of a node process: exit status 0, no traceback.

Ctrl-C in a terminal that runs `ros2 launch` signals the whole process group, and launch then
forwards SIGINT to every node it started (and SIGTERM when its timeout passes): a node receives
two or three signals in a row. Two defaults turn that into tracebacks:
  - Python's SIGINT handler raises KeyboardInterrupt for every signal, wherever the main thread
    is, also inside the clean-up the first one started (joining the inference worker,
    destroying the node);
  - rclpy's own handlers shut the context down from another thread, racing the executor, which
    then fails to build its wait set ("the given context is not valid").
So the node's main() runs rclpy without its handlers (`rclpy.init(signal_handler_options=NO)`)
and with `StopSignals`: the first signal asks the executor loop to stop (or, during start-up,
interrupts it), the ones after it are ignored, and the context is shut down by main() itself,
after the node was destroyed, in one thread.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Longest time the executor waits between looks at the stop request: a signal only sets a flag
# (the handler runs in the main thread, between two waits of the executor).
SPIN_PERIOD_S = 0.1


class StopSignals:
    """Handlers for SIGINT and SIGTERM: the first one stops the process, later ones are ignored.

    During start-up (`interrupt_main` true: loading a model can take long) the first signal
    raises KeyboardInterrupt in the main thread, as Python's default SIGINT handler does. While
    `spin()` runs it only sets `received`, which ends the loop between two executor waits, so
    no exception ever lands inside the executor's or a callback's bookkeeping.
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self.interrupt_main = True

    def install(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)
        return self

    def spin(self, executor: Any) -> None:
        """Run the executor's callbacks until a stop signal arrives."""
        self.interrupt_main = False
        while self.received is None:
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)

    def ignore_from_now(self) -> None:
        """The stop is done: ignore both signals until the process ends.

        Python's own teardown after main() resets every Python-level handler to the default
        action, so a late repeat (launch forwards Ctrl-C up to a moment later) would kill the
        exiting process with status -SIGINT. An ignored signal stays ignored through it; a
        hung exit can still be killed with SIGKILL, as launch escalates to.
        """
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            return  # a repeat (launch forwards the terminal's Ctrl-C): the stop is under way
        self.received = signal.Signals(signum)
        if self.interrupt_main:
            raise KeyboardInterrupt
