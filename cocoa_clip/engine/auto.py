"""How many RISE masks: the range each device allows, what "auto" means, and when an auto run may stop.

Every surface (library, CLI, web app, batch) reads its mask count through `mask_count`, so 0 and
"auto" mean the same everywhere and an out-of-range count gets the same sentence everywhere.

    CPU: default auto (at most 4,000 masks), a fixed count from 1 to 20,000
    GPU: default 20,000 (the paper's CLIP setting), a fixed count from 1 to 200,000

Auto estimates every map's stability (split-half, see rise.stability) at fixed checkpoints (64
masks, then about 12% more each time) and stops when every question's map has reached the target
at IN_A_ROW checkpoints in a row. One reading is not enough: at 64 to 100 masks a split-half
reading is itself noisy, and stopping at the first one that crosses the line left 14% of runs
below the target on a shapes-demo scene; benchmarks/auto_promise.py measures the rule.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import SettingsError, shown

AUTO = "auto"
MIN_MASKS = 1
MAX_MASKS = {"cpu": 20_000, "cuda": 200_000}  # the most a fixed count (or auto's cap) may be, per device type
DEFAULT_MASKS: dict[str, int | str] = {"cpu": AUTO, "cuda": 20_000}
AUTO_CAP = {"cpu": 4_000, "cuda": 20_000}  # the most masks an auto run draws unless told otherwise
FIRST_CHECK = 64  # masks before auto first estimates stability
IN_A_ROW = 2  # checkpoints in a row at which every map must reach the target
NULL_MASKS = 16  # what an auto run draws when no question can have a map (its corpus equals its foil)
_DEVICE_WORDS = {"cpu": "on a CPU", "cuda": "on a GPU"}


def _kind(device: torch.device | str | None) -> str:
    kind = torch.device(device).type if device is not None else "cuda"  # no device: the widest range
    return kind if kind in MAX_MASKS else "cpu"


def max_masks(device: torch.device | str | None) -> int:
    """The most masks a run may draw on this kind of device."""
    return MAX_MASKS[_kind(device)]


def range_sentence(device: torch.device | str | None, value: object, high: int | None = None,
                   what: str = "number of masks") -> str:
    """The one sentence every surface gives for a mask count it cannot take."""
    high = high or max_masks(device)
    where = f" {_DEVICE_WORDS[_kind(device)]}" if device is not None and high == max_masks(device) else ""
    auto = ", or 0 or auto for auto (masks until the map is stable)" if what == "number of masks" else ""
    return f"The {what} must be a whole number from {MIN_MASKS} to {high:,}{where}{auto}; got {shown(value)}."


def mask_count(value: object, device: torch.device | str | None, high: int | None = None) -> int | str:
    """A mask count as any surface sends it, checked: "auto" for 0 or "auto", the device's default for
    None or "", else a whole number (3.0 and "300" count) from MIN_MASKS to `high` (default: the device's most)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        value = DEFAULT_MASKS[_kind(device)]
    number = _whole(value)
    if number == 0 or (isinstance(value, str) and value.strip().lower() == AUTO):
        return AUTO
    if number is None or not MIN_MASKS <= number <= (high or max_masks(device)):
        raise SettingsError(range_sentence(device, value, high))
    return number


def auto_cap(value: object, device: torch.device | str | None, high: int | None = None) -> int:
    """The most masks an auto run draws: `value` checked (None: AUTO_CAP for the device, within `high`)."""
    limit = high or max_masks(device)
    if value is None:
        return min(AUTO_CAP[_kind(device)], limit)
    number = _whole(value)
    if number is None or not MIN_MASKS <= number <= limit:
        raise SettingsError(range_sentence(device, value, high, what="most masks"))
    return number


def _whole(value: object) -> int | None:
    """A whole number from an int, an integral float (sliders send floats) or digits; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return value if isinstance(value, int) else None


def checkpoints(cap: int) -> list[int]:
    """Mask counts at which auto estimates stability: FIRST_CHECK, then about 12% more each time, and the cap.

    Fixed by the cap alone (not the batch size), so a seed stops at the same count on every machine.
    """
    points, count = [], FIRST_CHECK
    while count < cap:
        points.append(count)
        count += max(32, count // 8)
    return points + [cap]


def settled(readings: Sequence[torch.Tensor], target: float) -> bool:
    """Whether auto may stop: readings are the (Q,) stabilities at the checkpoints so far, oldest first.

    True when the last IN_A_ROW readings of every question reach `target`. A NaN reading (a flat
    map: the score does not depend on the picture) counts as reached, as more masks cannot change it.
    """
    if len(readings) < IN_A_ROW:
        return False
    return all(bool(((reading >= target) | reading.isnan()).all()) for reading in readings[-IN_A_ROW:])


def null(direction: torch.Tensor) -> bool:
    """A target direction so short that every masked score is the same (corpus equals foil): its map is flat."""
    return math.isclose(float(direction.norm()), 0.0, abs_tol=1e-6)
