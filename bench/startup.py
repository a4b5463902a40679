"""Start-up cost: `import imgclass` and `imgclass --help` / `imgclass VERB --help`, each against
`python -c pass` measured in the same run (median of N fresh processes). Target (issue 16): the help
answers in under 1 s; `import imgclass` loads none of matplotlib, scikit-learn, fastapi.

    python bench/startup.py [--repeat 7]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from common import machine

CASES = [("python -c pass", ["-c", "pass"]),
         ("import imgclass", ["-c", "import imgclass"]),
         ("imgclass --help", ["-m", "imgclass", "--help"]),
         ("imgclass train --help", ["-m", "imgclass", "train", "--help"]),
         ("imgclass serve --help", ["-m", "imgclass", "serve", "--help"]),
         ("imgclass export --help", ["-m", "imgclass", "export", "--help"]),
         ("import imgclass; imgclass.load (the API)", ["-c", "import imgclass; imgclass.load"])]


def seconds(args: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print(machine())
    heavy = subprocess.run([sys.executable, "-c", "import imgclass, sys; print(sorted(m for m in ('matplotlib', "
                            "'sklearn', 'fastapi', 'torch') if m in sys.modules))"], capture_output=True, text=True)
    print(f"modules loaded by `import imgclass`: {heavy.stdout.strip()}")
    base = seconds(CASES[0][1], args.repeat)
    for name, case in CASES:
        t = base if case == CASES[0][1] else seconds(case, args.repeat)
        target = " (target < 1 s: " + ("met" if t < 1 else "MISSED") + ")" if "help" in name else ""
        print(f"{name:45s} {t:6.3f} s  {t / base:6.1f}x python -c pass{target}")


if __name__ == "__main__":
    main()
