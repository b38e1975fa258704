"""Meshes for new audio, and the trained model in AniPortrait's format.

    a2m predict AUDIO --run-dir RUN_DIR [--speaker S] [--reference CLIP:FRAME] [--articulation G] --out OUT.npz
    a2m predict AUDIO --checkpoint CKPT --neutral NEUTRAL.npz --out OUT.npz
    a2m predict AUDIO --onnx MODEL.onnx [--speaker S] --out OUT.npz       # onnxruntime, the same windows and gain
    a2m export-aniportrait --run-dir RUN_DIR OUT_DIR

`predict_audio` reads any file ffmpeg reads (wav, mp3, m4a, a video with sound; any rate and channel count),
runs the one inference path (Audio2Mesh.predict: long audio in overlapping windows, the articulation gain) and
writes OUT.npz: verts (T, V, 3) absolute meshes with T = ceil(seconds x fps), fps, the reference and the gain used.
With --run-dir, the run's config.yaml gives the frame rate and the store, its evaluation's fitted articulation gain
(rundir.articulation) the speaker's gain unless --articulation sets one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import Wav2Vec2Model

from . import files, media, regions, rundir, store
from .config import config_from_dict, run_config
from .model import Articulation, Audio2Mesh, load_checkpoint, load_model


class PredictError(ValueError):
    """Bad input for prediction; the message names the file and the fix."""


@dataclass
class Inputs:
    """What `a2m predict` needs besides the audio (prepare): the model, the mesh its offsets are added to, the
    speaker, the dynamic reference's offsets (None: the neutral), the frame rate and the articulation gain."""

    model: Audio2Mesh  # or an OnnxModel (a2m_lib.onnx_model): the same predict()
    base_mesh: np.ndarray
    speaker: str | None
    reference_offsets: np.ndarray | None
    fps: float
    articulation: float = 1.0


@dataclass
class Prediction:
    verts: np.ndarray   # (T, V, 3) absolute meshes, mesh units
    fps: float
    audio_seconds: float
    seconds: float      # from the loaded model to the written file
    path: Path

    @property
    def real_time_factor(self) -> float:
        return self.audio_seconds / max(self.seconds, 1e-9)


def read_speech(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Mono audio at `sample_rate` from any file ffmpeg reads, or a PredictError naming the file and the fix."""
    path = Path(path)
    if not path.exists():
        raise PredictError(f"{path} does not exist; give the path of an audio file (wav, mp3, m4a) or a video with sound")
    try:
        streams = media.probe_streams(path)
    except media.MediaError as error:
        raise PredictError(f"{path} is not a readable media file ({error}); convert it to wav or mp3") from None
    if not streams["has_audio"]:
        raise PredictError(f"{path} has no audio stream; give a file with speech in it")
    audio = media.read_audio(path, sample_rate)
    if audio.size < sample_rate // 10:
        raise PredictError(f"{path} holds {audio.size / sample_rate:.2f} s of audio; give at least 0.1 s of speech")
    return audio


def smooth(verts: np.ndarray, window: int) -> np.ndarray:
    """Savitzky-Golay smoothing over time (window frames, odd, order 2), which AniPortrait's users apply."""
    if window < 3:
        return verts
    from scipy.signal import savgol_filter

    window = min(window | 1, len(verts) - (1 - len(verts) % 2))
    return savgol_filter(verts, window, 2, axis=0) if window >= 3 else verts


def predict_audio(model: Audio2Mesh, audio_path: str | Path, out_path: str | Path, base_mesh: np.ndarray,
                  fps: float, speaker: str | None = None, reference_offsets: np.ndarray | None = None,
                  smooth_frames: int = 0, video_path: str | Path | None = None, sample_rate: int = 16000,
                  articulation: float = 1.0) -> Prediction:
    """Audio file -> OUT.npz of absolute meshes (base_mesh + predicted offsets); optionally a video with the audio."""
    audio = read_speech(audio_path, sample_rate)
    started = time.time()
    n_frames = store.expected_frames(len(audio), sample_rate, fps)
    offsets = model.predict(audio, n_frames, speaker=speaker, reference=reference_offsets, sample_rate=sample_rate, fps=fps,
                            articulation=articulation)
    verts = smooth(base_mesh[None] + offsets, smooth_frames).astype(np.float32)
    out_path = Path(out_path)
    with files.atomic_path(out_path) as tmp:
        np.savez(tmp, verts=verts, fps=fps, reference=base_mesh, speaker=speaker or "", units="mesh units (~cm)",
                 articulation=articulation, audio=audio.astype(np.float32), sample_rate=sample_rate)
    result = Prediction(verts=verts, fps=fps, audio_seconds=len(audio) / sample_rate, seconds=time.time() - started,
                        path=out_path)
    if video_path:
        from . import render

        render.render_meshes(video_path, {"model": verts}, fps, audio, sample_rate, side_view=True)
    return result


def prepare_onnx(path: str | Path, speaker: str | None, articulation: float | None = None) -> Inputs:
    """What `a2m predict --onnx` needs: the exported model (run by onnxruntime), its neutral for the speaker, its fps,
    and the gain (the run's fitted one, carried in the file's metadata, unless --articulation sets one)."""
    from .onnx_model import OnnxModel

    model = OnnxModel(path)
    if speaker is None and len(model.speakers) > 1:
        raise PredictError(f"{path} knows speakers {', '.join(model.speakers)}; choose one with --speaker")
    speaker = speaker if speaker is not None else (model.speakers[0] if model.speakers else None)
    try:
        base = model.neutral(speaker)
    except ValueError as error:
        raise PredictError(str(error)) from None
    gain = model.gain(speaker) if articulation is None else float(articulation)
    if gain <= 0:
        raise PredictError(f"--articulation {gain}: give a gain > 0 (1 = as trained, 1.3 = 30% more movement)")
    return Inputs(model=model, base_mesh=base, speaker=speaker, reference_offsets=None, fps=model.fps, articulation=gain)


def prepare(run_dir: str | Path | None, checkpoint: str | Path | None, neutral: str | Path | None, speaker: str | None,
            reference: str | None, articulation: float | None = None, device: str = "cpu") -> Inputs:
    """Model, base mesh, speaker, reference offsets, fps and articulation gain for `a2m predict`: from a run (its
    config.yaml, checkpoint, neutrals and fitted gain) or from a checkpoint + neutral."""
    if (run_dir is None) == (checkpoint is None):
        raise PredictError("give either --run-dir RUN_DIR, or --checkpoint CKPT with --neutral NEUTRAL.npz")
    cfg = run_config(run_dir) if run_dir is not None else None
    checkpoint = Path(checkpoint) if checkpoint else rundir.checkpoint(run_dir, cfg.evaluate.checkpoint)
    if checkpoint.is_dir():  # a save_pretrained folder: no training config inside
        model = load_model(checkpoint, device)
    else:  # a training checkpoint, read once: the model and, without a run, the config it was trained with
        state = load_checkpoint(checkpoint)
        model = Audio2Mesh.from_state(state, state["model"]).to(device).eval()
        if cfg is None and state.get("config"):
            cfg = config_from_dict(state["config"], str(checkpoint))
    fps = cfg.data.fps if cfg else 30.0
    if speaker is None and model.speakers:
        if len(model.speakers) > 1 and (model.speaker_embedding is not None or neutral is None):
            raise PredictError(f"{checkpoint} knows speakers {', '.join(model.speakers)}; choose one with --speaker")
        speaker = model.speakers[0]
    if speaker is not None and model.speakers and speaker not in model.speakers and model.speaker_embedding is not None:
        raise PredictError(f"unknown speaker '{speaker}' for {checkpoint}; choose one of {', '.join(model.speakers)}")
    if neutral is None:
        neutral = rundir.neutral_file(run_dir, speaker)
        if not neutral.exists():
            raise PredictError(f"{neutral} does not exist: speaker '{speaker}' has no neutral in {run_dir}; "
                               f"choose --speaker from {', '.join(model.speakers)} or give --neutral")
    base = rundir.load_neutral(neutral)["mesh"][: model.cfg.n_vertices]
    reference_offsets = None
    if reference:
        if cfg is None:
            raise PredictError("--reference CLIP:FRAME needs --run-dir (the clip store it names comes from the run's config)")
        clip_id, _, frame = reference.rpartition(":")
        mesh = store.load_clip(cfg.data.processed, clip_id, keys=("mesh",))["mesh"][int(frame), : model.cfg.n_vertices]
        if not np.isfinite(mesh).all():
            raise PredictError(f"--reference {reference}: that frame has no face; choose another frame")
        reference_offsets, base = mesh - base, mesh
    if articulation is None and run_dir is not None and cfg.evaluate.articulation != "auto":
        articulation = float(cfg.evaluate.articulation)  # the run set one gain
    if articulation is None:  # the run's fitted gain for this speaker (a voice it never heard: the run's default)
        fitted = Articulation.read(rundir.articulation(run_dir)) if run_dir is not None else None
        articulation = fitted.gain(speaker) if fitted else 1.0
    if articulation <= 0:
        raise PredictError(f"--articulation {articulation}: give a gain > 0 (1 = as trained, 1.3 = 30% more movement)")
    return Inputs(model=model, base_mesh=base, speaker=speaker, reference_offsets=reference_offsets, fps=fps,
                  articulation=float(articulation))


# ----------------------------------------------------------------------------------- AniPortrait export

class ExportError(ValueError):
    """The model cannot be mapped onto AniPortrait's Audio2MeshModel; the message says why."""


def export_aniportrait(run_dir: str | Path, out_dir: str | Path, checkpoint: str = "best") -> dict:
    """Write OUT_DIR/audio2mesh.pt (a state dict for AniPortrait's Audio2MeshModel), OUT_DIR/wav2vec2/ (the audio
    encoder's config and weights, for `model_path`), and OUT_DIR/inference_audio.yaml (their a2m_model section)."""
    path = rundir.checkpoint(run_dir, checkpoint)
    model = load_model(path)
    reasons = []
    if not isinstance(model.audio_encoder, Wav2Vec2Model):
        reasons.append(f"its audio encoder is not a Wav2Vec2Model, as AniPortrait's is: {model.audio_encoder.describe()}")
    if model.cfg.n_vertices != regions.N_LANDMARKS:
        reasons.append(f"it predicts {model.cfg.n_vertices} vertices (AniPortrait: 468, 1404 outputs)")
    if model.speaker_embedding is not None:
        reasons.append("it has a speaker embedding (AniPortrait's model has none)")
    if model.reference_fn is not None:
        reasons.append("it was trained with a dynamic reference (model.reference; AniPortrait's model takes no reference)")
    if model.cfg.speaker_normalisation:
        reasons.append("it scales its outputs per speaker (model.speaker_normalisation; AniPortrait's model does not)")
    if reasons:
        raise ExportError(f"cannot export {path} to AniPortrait: " + "; ".join(reasons))
    out_dir = Path(out_dir)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    with files.atomic_path(out_dir / "audio2mesh.pt") as tmp:
        torch.save(state, tmp)
    model.audio_encoder.save_pretrained(out_dir / "wav2vec2")
    settings = {"a2m_model": {"out_dim": model.cfg.n_vertices * 3, "latent_dim": model.cfg.latent_dim,
                              "model_path": str((out_dir / "wav2vec2").resolve()),
                              "only_last_fetures": model.audio_encoder.options.only_last_features,  # their spelling
                              "from_pretrained": False},  # the weights come with audio2mesh.pt
                "a2m_ckpt": str((out_dir / "audio2mesh.pt").resolve())}
    files.write_text(out_dir / "inference_audio.yaml", yaml.safe_dump(settings, sort_keys=False))
    return settings
