"""Store-key specs, shared by the dataset (which reads stores) and the runtime history (which reads
the env's observations the same way). Imports nothing of dp but its errors.

A key names a store array (``"state"``) or columns of its last axis (``"state[0:2]"``, Python slice
bounds): diffusion_policy's PushT store has no ``agent_pos``; it is ``state[0:2]`` there.
"""
from __future__ import annotations

import re

from dp.errors import ConfigError

_COLUMNS = re.compile(r"^(?P<key>[^\[\]]+)\[(?P<start>-?\d*):(?P<stop>-?\d*)\]$")


def split_key(spec: str) -> tuple[str, slice | None]:
    """``"state[0:2]"`` -> ("state", slice(0, 2)); ``"state"`` -> ("state", None)."""
    if "[" not in spec:
        return spec, None
    m = _COLUMNS.match(spec)
    if m is None:
        raise ConfigError(f"obs key {spec!r}: expected a store key, or a key with columns of its last axis such as "
                          f"'state[0:2]' (slice bounds, no step).")
    to_int = lambda v: int(v) if v else None  # noqa: E731
    return m["key"], slice(to_int(m["start"]), to_int(m["stop"]))
