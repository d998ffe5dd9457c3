"""Progress bars for long jobs (distillation, retrieval, extraction, scoring): on a terminal only.

``progress_bar(total, desc, unit, enabled)``: a tqdm bar on stderr; ``enabled=None`` shows it only
when stderr is a terminal (quiet in logs and CI), False never, True always.  Use it as a context
manager and call ``bar.update(n)``.
"""
import sys
from typing import Optional


def progress_bar(total: int, desc: str, unit: str = "item", enabled: Optional[bool] = None):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                disable=None if enabled is None else not enabled)
