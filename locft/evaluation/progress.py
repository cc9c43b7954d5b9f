"""The evaluation layer's progress report: `progress(done, total, what)`.

One shape for every measurement that reports while it runs: editing metrics (generations done,
and which set), capability (tasks measured, or the requests lm-eval has scored within a task).
Whatever a callback raises stops the measurement (e.g. a round being stopped).
"""

from __future__ import annotations

from collections.abc import Callable

EvaluationProgress = Callable[[int, int, str], None]

__all__ = ["EvaluationProgress"]
