"""A run folder, runs/<id>/: the one module that names its files. Every decision that depends on a run's settings
lives here, never in the clip store (a2m_lib.store).

    runs/<id>/
        config.yaml          the resolved config, written once when the run starts: what every stage reads
        run.json             the record: config, commit, packages, each notebook's status and time (a2m_lib.runner)
        notebooks/           the executed notebooks
        qa.csv               QA's decisions (a2m_lib.qa); `accepted_clips` reads the rows marked `use`
        neutral/<speaker>.npz, neutral/choice.json      the neutrals (a2m_lib.neutral, a2m_lib.picker)
        splits.csv           train | val | test | unused per clip (a2m_lib.train)
        checkpoints/{last,best}.pt, train_log.csv, train_summary.json, tensorboard/
        articulation.json    the gain on the predicted movement per speaker, fitted on validation (a2m_lib.evaluate)
        slurm/               job scripts, logs and the report of a run on a SLURM cluster (a2m_lib.cluster)
        predictions/<clip>.npz, metrics.json, renders/  (a2m_lib.evaluate)

    table = rundir.accepted_clips(run_dir)
    neutrals = rundir.load_neutrals(run_dir)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import files


def config(run_dir) -> Path:
    return Path(run_dir) / "config.yaml"


def record(run_dir) -> Path:
    return Path(run_dir) / "run.json"


def notebooks(run_dir) -> Path:
    return Path(run_dir) / "notebooks"


def qa_table(run_dir) -> Path:
    return Path(run_dir) / "qa.csv"


def neutral_dir(run_dir) -> Path:
    return Path(run_dir) / "neutral"


def neutral_file(run_dir, speaker: str) -> Path:
    return neutral_dir(run_dir) / f"{speaker}.npz"


def neutral_choice(run_dir) -> Path:
    return neutral_dir(run_dir) / "choice.json"


def splits(run_dir) -> Path:
    return Path(run_dir) / "splits.csv"


def checkpoints(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint(run_dir, name: str = "best") -> Path:
    """checkpoints/<name>.pt: `best` (lowest validation loss) or `last` (what a resumed run continues from)."""
    return checkpoints(run_dir) / f"{name}.pt"


def train_log(run_dir) -> Path:
    return Path(run_dir) / "train_log.csv"


def train_summary(run_dir) -> Path:
    return Path(run_dir) / "train_summary.json"


def tensorboard(run_dir) -> Path:
    return Path(run_dir) / "tensorboard"


def predictions(run_dir) -> Path:
    return Path(run_dir) / "predictions"


def metrics(run_dir) -> Path:
    return Path(run_dir) / "metrics.json"


def renders(run_dir) -> Path:
    return Path(run_dir) / "renders"


def render(run_dir, clip_id: str, kind: str = "video") -> Path:
    """renders/<clip>.mp4 (video: truth | model with the audio) or renders/<clip>.html (view: the 3D viewer)."""
    return renders(run_dir) / f"{clip_id}.{'mp4' if kind == 'video' else 'html'}"


def slurm(run_dir) -> Path:
    """The jobs that ran the run on a SLURM cluster: their scripts, logs, `<step>.ok` markers and report.json."""
    return Path(run_dir) / "slurm"


def slurm_report(run_dir) -> Path:
    return slurm(run_dir) / "report.json"


def articulation(run_dir) -> Path:
    """The articulation gain per speaker that evaluation fitted on the validation clips (a2m predict applies it)."""
    return Path(run_dir) / "articulation.json"


def read_table(path: Path, advice: str):
    """A CSV of the run, or a FileNotFoundError naming it and the step that writes it."""
    import pandas as pd  # imported where used: extraction workers start faster without pandas

    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; {advice}")
    return pd.read_csv(path, keep_default_na=False)


def accepted_clips(run_dir):
    """The run's QA rows marked `use` (passed, or uncertain with qa.use_uncertain): the clip list that neutral
    selection, training and evaluation read."""
    table = read_table(qa_table(run_dir), f"run alignment QA for this run (notebook 02, or `a2m qa STORE --run-dir "
                                          f"{run_dir}`) first")
    used = table.use.astype(str) == "True" if "use" in table else table.status == "pass"  # older tables: no `use`
    return table[used].reset_index(drop=True)


def read_splits(run_dir):
    return read_table(splits(run_dir), "train this run first (notebook 04): training writes the split")


def write_splits(run_dir, table) -> Path:
    """splits.csv, written when it is new or its content changed (a2m_lib.dataset.make_split decides the split)."""
    path = splits(run_dir)
    text = table.to_csv(index=False)
    if not path.exists() or path.read_text() != text:
        files.write_text(path, text)
    return path


# ----------------------------------------------------------------------------------- the neutrals

def save_neutral(path: str | Path, neutral_mesh: np.ndarray, speaker: str, clip_id: str, frame: int,
                 chosen_by: str, score: float = float("nan")) -> Path:
    """Write one speaker's neutral atomically; it carries where it came from and who chose it."""
    path = Path(path)
    with files.atomic_path(path) as tmp:
        np.savez(tmp, mesh=neutral_mesh.astype(np.float32), speaker=speaker, clip_id=clip_id, frame=int(frame),
                 chosen_by=chosen_by, score=float(score))
    return path


def load_neutral(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"neutral file {path} does not exist; run neutral selection (notebook 03) first")
    with np.load(path) as data:
        return {key: (data[key].item() if data[key].ndim == 0 else data[key]) for key in data.files}


def record_neutral_choice(run_dir, choice: str, rows: list[dict], replace: bool = True) -> dict:
    """choice.json (which choice made each speaker's neutral, and who chose it) and the run record's `neutral` entry,
    written together. replace=False (one speaker picked by hand) updates those speakers' rows and keeps the rest."""
    path = neutral_choice(run_dir)
    kept = [] if replace or not path.exists() else json.loads(path.read_text())["speakers"]
    named = {row["speaker"] for row in rows}
    entry = {"neutral": choice if replace or not path.exists() else json.loads(path.read_text())["neutral"],
             "speakers": sorted([r for r in kept if r["speaker"] not in named] + rows, key=lambda r: r["speaker"])}
    files.write_json(path, entry)
    update_record(run_dir, neutral=entry)
    return entry


def update_record(run_dir, **entries) -> None:
    """Put entries into run.json, when the run has one (a2m_lib.runner writes the rest of it)."""
    path = record(run_dir)
    if path.exists():
        files.write_json(path, dict(json.loads(path.read_text()), **entries))


def other_store(run_dir, processed) -> Path:
    """Where `a2m evaluate --data STORE` keeps that store's QA decisions, neutrals, predictions and metrics."""
    return Path(run_dir) / f"eval_{Path(processed).name}"


def branch(base, new) -> Path:
    """Start run `new` from run `base`'s QA decisions and neutrals (its qa.csv and neutral/): the new run trains
    and evaluates on exactly what the base run accepted, with its own config, checkpoints and metrics."""
    import shutil

    base, new = Path(base), Path(new)
    for needed in (qa_table(base), neutral_dir(base)):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} does not exist: run notebooks 02-03 in {base} first (a2m run --config "
                                    f"CONFIG --run-dir {base} --only 02, then --only 03)")
    new.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(qa_table(base), qa_table(new))
    shutil.copytree(neutral_dir(base), neutral_dir(new), dirs_exist_ok=True)
    return new


def load_neutrals(run_dir) -> dict[str, np.ndarray]:
    """{speaker: (478, 3) neutral mesh} from the run's neutral/ folder."""
    folder = neutral_dir(run_dir)
    found = {p.stem: load_neutral(p)["mesh"] for p in sorted(folder.glob("*.npz")) if not files.is_part(p)}
    if not found:
        raise FileNotFoundError(f"no neutral files in {folder}; run neutral selection (notebook 03) first")
    return found
