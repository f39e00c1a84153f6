"""Weight schedules over training."""
import math


def sigmoid_rampup(progress: float, length: float) -> float:
    """The field's sigmoid ramp-up (Laine & Aila 2017, as in UA-MT / SSL4MIS): ``exp(-5 (1 - t)^2)`` with
    ``t = clip(progress / length, 0, 1)``; 1 once ``progress >= length`` and also for ``length == 0``."""
    if length <= 0:
        return 1.0
    t = min(max(progress / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))
