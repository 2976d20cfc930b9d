"""Record the slow adversarial sweep's references (``data/adversarial_sweep_references.json``).

Runs :func:`test_adversarial.check_draw` with the slow sweep's settings (pyhf scipy with the
jax backend, MINUIT capped at 20000 calls, the 20-start search) on the given draws, prints
each draw's outcome, and merges the references' ``-2 ln L`` into the store, written
atomically after every draw (an interrupted run keeps what it finished; a rerun skips
stored draws unless ``--redo``). ``test_adversarial_fits_against_stored_references`` then
re-checks diffhep against the store without the oracle.

Usage (from the repository root, ~50-100 CPU-s per full-size draw)::

    python tests/sweep_references.py 1000:0 1000:1 ...   # structure seed:draw
    python tests/sweep_references.py --seeds 1000-1099    # draws 0-4 of each structure
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
STORE = HERE / "data" / "adversarial_sweep_references.json"


def _cases(args) -> list[tuple[int, int]]:
    cases = [tuple(map(int, c.split(":"))) for c in args.cases]
    if args.seeds:
        lo, hi = map(int, args.seeds.split("-"))
        cases += [(s, d) for s in range(lo, hi + 1) for d in range(5)]
    return cases


def _write(store: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=STORE.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(store, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, STORE)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", help="seed:draw")
    parser.add_argument("--seeds", help="a range of structure seeds, e.g. 1000-1099")
    parser.add_argument("--redo", action="store_true", help="recompute stored draws")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import diffhep

    diffhep.enable_x64()
    import jax

    import test_adversarial as ta

    store = json.loads(STORE.read_text()) if STORE.exists() else {"draws": {}}
    compiled_for = None
    for seed, draw in _cases(args):
        key = f"{seed}/{draw}"
        if key in store["draws"] and not args.redo:
            continue
        if seed != compiled_for:  # a structure's draws share diffhep's compiled fits (~18 s)
            jax.clear_caches()  # pyhf's jax fits compile per model and keep it
            compiled_for = seed
        cpu = time.process_time()
        out = ta.check_draw(seed, False, draw, minuit_calls=ta.MINUIT_CALLS, scipy_backend="jax")
        print(f"== {key} problems {len(out.problems)} unchecked {len(out.unchecked)} "
              f"cpu {time.process_time() - cpu:.0f}s", flush=True)  # fmt: skip
        for what, ours, refs in out.values:
            print(
                f"   {what}: diffhep {ours:.6f} | "
                + ", ".join(f"{k} {v:.6f}" for k, v in refs.items())
            )
        for p in out.problems + out.unchecked:
            print(f"   {p}")
        store["draws"][key] = {what.rsplit(", ", 1)[1]: refs for what, _, refs in out.values}
        _write(store)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
