"""Wall time of each stage of a run, for the results' metadata."""

import time
from dataclasses import dataclass, field


@dataclass
class Stopwatch:
    laps: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    start: float = field(default_factory=time.perf_counter)

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.start, 3)
        self.start = now
