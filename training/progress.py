"""What a training run shows while it runs: status lines, a progress bar, a smoothed token rate.

The rate is measured over a sliding window of wall time (``WINDOW_S``), not per
step: on a shared machine single steps vary several-fold, and a per-step (or
tqdm's default exponential) rate jumps with them. The ETA uses the same rate.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Callable, Optional

from tqdm.auto import tqdm

WINDOW_S = 30.0           # the token rate is averaged over this much wall time
ESTIMATE_AFTER_S = 15.0   # print one time estimate once this much training has been timed
STATUS_EVERY_S = 60.0     # without a bar: one status line this often


def human_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 90:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 90:
        return f"{minutes} min {s:02d} s"
    h, m = divmod(minutes, 60)
    return f"{h} h {m:02d} min"


class TokenRate:
    """Tokens per second over the last ``window_s`` seconds of ``(time, tokens)`` samples."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, tokens: int) -> None:
        self.samples.append((now, tokens))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    @property
    def span_s(self) -> float:
        return self.samples[-1][0] - self.samples[0][0] if len(self.samples) > 1 else 0.0

    def rate(self) -> Optional[float]:
        """Tokens/s over the window, or None before two samples."""
        if self.span_s <= 0:
            return None
        return (self.samples[-1][1] - self.samples[0][1]) / self.span_s


class Progress:
    """A step bar (``bar=True``) or periodic status lines, both with the windowed token rate.

    ``log`` receives status lines (a no-op when None); with a bar they are printed above it.
    """

    def __init__(self, total_steps: int, start_step: int, tokens_per_step: int, bar: bool,
                 log: Optional[Callable[[str], None]] = None) -> None:
        self.total, self.tokens_per_step = total_steps, tokens_per_step
        self._log = log or (lambda _msg: None)
        self.rate = TokenRate()
        self.t_start = time.perf_counter()
        self.rate.add(self.t_start, start_step * tokens_per_step)
        self._estimated = False
        self._last_status = self.t_start
        self.loss: Optional[float] = None   # the last loss read (logging steps only)
        self.bar = (tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                         smoothing=0.0, mininterval=0.5) if bar else None)

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg)
        else:
            self._log(msg)

    def eta_s(self, step: int) -> Optional[float]:
        r = self.rate.rate()
        return None if not r else (self.total - step) * self.tokens_per_step / r

    def update(self, step: int, loss: Optional[float] = None) -> None:
        """After optimizer step ``step``; ``loss`` when it was read (logging steps)."""
        now = time.perf_counter()
        self.loss = loss if loss is not None else self.loss
        loss = self.loss
        self.rate.add(now, step * self.tokens_per_step)
        r, eta = self.rate.rate(), self.eta_s(step)
        if not self._estimated and self.rate.span_s >= ESTIMATE_AFTER_S and eta is not None:
            self._estimated = True
            self.write(f"speed {r:,.0f} tokens/s over the last {self.rate.span_s:.0f} s: "
                       f"about {human_duration(eta)} to go")
        if self.bar is not None:
            post = {} if loss is None else {"loss": f"{loss:.3f}"}
            if r:
                post["tok/s"] = f"{r:,.0f}"
            if post:
                self.bar.set_postfix(post, refresh=False)
            self.bar.update(step - self.bar.n)   # tqdm redraws at most every mininterval
        elif now - self._last_status >= STATUS_EVERY_S and eta is not None:
            self._last_status = now
            self._log(f"step {step:,}/{self.total:,}" + (f"  loss {loss:.3f}" if loss is not None else "")
                      + f"  {r:,.0f} tokens/s  about {human_duration(eta)} to go")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
