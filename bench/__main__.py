"""Run every benchmark module in this package, or only those named: ``python -m bench server``."""

import importlib
import pkgutil
import sys
from pathlib import Path


def _default(name: str) -> bool:
    return bool(getattr(importlib.import_module(f"bench.{name}"), "DEFAULT_RUN", True))


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))
    # Modules with DEFAULT_RUN = False (the chaos run) run only when named.
    wanted = argv or [n for n in names if _default(n)]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        print(f"bench: unknown benchmark(s): {', '.join(unknown)}; have: {', '.join(names)}",
              file=sys.stderr)
        return 2
    for name in wanted:
        module = importlib.import_module(f"bench.{name}")
        if not hasattr(module, "main"):
            continue
        print(f"== bench.{name} ==", flush=True)
        module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
