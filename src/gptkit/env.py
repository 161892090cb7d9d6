"""gptkit's on/off environment switches (GPTKIT_AUTOTUNE, GPTKIT_QUICK, GPTKIT_THREAD_GUARD), read one way.

A switch is on for 1, on, yes or true and off for 0, off, no or false (any case, spaces ignored), its default when
unset or empty. Any other value (a typo: `GPTKIT_AUTOTUNE=of`) keeps the default and says so once per process on
stderr: it silently turned measuring on, or the quick caps on for GPTKIT_QUICK=false.
"""

from __future__ import annotations

import os
import sys

ON = ("1", "on", "yes", "true")
OFF = ("0", "off", "no", "false")
_warned: set[str] = set()


def switch(name: str, default: bool) -> bool:
    """Whether environment switch `name` is on."""
    raw = os.environ.get(name, "")
    value = raw.strip().lower()
    if value in ON:
        return True
    if value in OFF:
        return False
    if value and name not in _warned:
        _warned.add(name)
        print(f"gptkit: warning: {name}={raw!r} is neither on ({', '.join(ON)}) nor off ({', '.join(OFF)}); "
              f"taking its default, {'on' if default else 'off'}", file=sys.stderr)
    return default
