"""Every `gptkit` command's options as a typed dataclass, and the one generator that turns them into flags.

Light on purpose (no torch, numpy or pandas): building any parser, and `gptkit --help`, imports only this
package and `gptkit.commands`. Modules: `generator` (fields → argparse, the --config YAML merge, type checks),
`common` (the flags that mean the same in every command), then one module per command family.
"""

from __future__ import annotations

from .generator import add_options, as_typed, check_types, flag_name, flag_type, from_args, load_yaml_options, opt

__all__ = ["add_options", "as_typed", "check_types", "flag_name", "flag_type", "from_args", "load_yaml_options", "opt"]
