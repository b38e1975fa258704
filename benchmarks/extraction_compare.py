"""Single-face extraction throughput of this checkout against an earlier commit, side by side in one run.

    .venv/bin/python benchmarks/extraction_compare.py --base c751eaf [--repeat 3] [--rounds 3]

Both trees extract the same videos (the four real 512x512 clips of benchmarks/extraction.py, each copied
`--repeat` times) with 1 worker and the demo config (extract.max_faces=2: the second-face checks run, no
second face appears). Each round runs base then this checkout, each in a fresh process; the medians and
their ratio are printed. The base tree is a `git worktree` in a temporary folder, removed afterwards.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.extraction import CLIPS, EVAL_MEDIA  # noqa: E402

ONE_RUN = """
import sys, time, json
sys.path.insert(0, {tree!r})
from a2m_lib import extract
from a2m_lib.config import load_config
if __name__ == "__main__":
    cfg = load_config({tree!r} + "/configs/demo.yaml")
    started = time.perf_counter()
    manifest = extract.extract_store({raw!r}, {out!r}, cfg.data, cfg.extract, workers=1, progress=False)
    print(json.dumps(dict(fps=float(manifest.n_frames.sum()) / (time.perf_counter() - started))))
"""


def rate(tree: Path, raw: Path, work: Path) -> float:
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    script = work / "one_run.py"
    script.write_text(ONE_RUN.format(tree=str(tree), raw=str(raw), out=str(out)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["fps"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        raw = work / "raw"
        raw.mkdir()
        for copy in range(args.repeat):
            for clip in CLIPS:
                (raw / f"{copy}_{Path(clip).name}").symlink_to(EVAL_MEDIA / clip)
        base = work / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=REPO, check=True,
                       capture_output=True)
        try:
            rates = {"base": [], "this": []}
            for _ in range(args.rounds):
                rates["base"].append(rate(base, raw, work))
                rates["this"].append(rate(REPO, raw, work))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, check=True)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(json.dumps(dict(base=args.base, samples=rates, median_fps=medians,
                          ratio_this_to_base=round(medians["this"] / medians["base"], 3)), indent=2))


if __name__ == "__main__":
    main()
