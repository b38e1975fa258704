"""Copies of one recording among a speaker's clips (the same clip published twice, re-encoded, cropped or re-timed):
QA fails them, so a training clip cannot also sit among the held-out ones.

    prints = {clip_id: copies.fingerprint(audio, sample_rate) for ...}          # per clip, while QA reads it
    found = copies.find_copies(prints, groups, load_audio, sample_rate)          # clip_id -> (original, r)

Comparing every clip with every other clip of its speaker grows with the square of the clip count (34 s of QA's
83 s at 1,000 clips of one speaker). So the comparison runs in two steps:
1. **Candidates from an index of spectral landmarks** (the audio-fingerprint method of Wang 2003, "An
   industrial-strength audio search algorithm", as Shazam uses it): each clip's spectrogram peaks are paired
   with the next few peaks; a pair's (frequency, frequency, time gap) is a key that survives re-encoding,
   gain and cropping. Clips that share many keys at one consistent time offset are candidates. One sort of
   every clip's keys finds them: the cost grows with the number of landmarks, not with pairs of clips.
2. **The waveforms of each candidate pair compared**: a clip is a copy when the middle PROBE_SECONDS of
   either clip is found in the other with correlation DUPLICATE_MIN_CORRELATION. Only this decides.
Written with numpy and scipy rather than an audio-fingerprint package: the ones on PyPI shell out to
ffmpeg per file and keep a database; here the audio is already in memory and the index lives for one check.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.ndimage import maximum_filter

PROBE_SECONDS = 2.0              # the middle of each clip that is looked for in the other
DUPLICATE_MIN_CORRELATION = 0.9  # correlation of the waveforms: copies 0.93-1.00, other speech below 0.25

# Spectral landmarks: a 32 ms window every 10 ms, peaks between 250 and 4,250 Hz.
LANDMARK_HOP_SECONDS = 0.01
LANDMARK_WINDOW = 512            # samples at 16 kHz
LANDMARK_BINS = (8, 136)         # rfft bins kept at 16 kHz (31.25 Hz each)
LANDMARK_PEAK_SIZE = (9, 15)     # a peak is the maximum of its 90 ms x 470 Hz neighbourhood ...
LANDMARK_PEAK_ABOVE = 2.0        # ... and stands this far (natural log) above the clip's median level
LANDMARK_FAN_OUT = 6             # each peak is paired with the next six
LANDMARK_MAX_GAP = 63            # hops (0.63 s)
# Landmarks two clips share at one time offset (±1 hop) before their waveforms are compared. Measured: copies
# that overlap 2 s share 69-158 (re-encoded at 48 kbit/s, half the volume, shifted 37 samples; another crop of
# one video); different clips of one speaker saying the same grammar (GRID s1, 1,000 clips) share at most 15.
CANDIDATE_MIN_VOTES = 20
JOIN_PAIRS_PER_PART = 1_000_000  # the join runs in parts of about this many key matches (~50 MB each)


def fingerprint(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """A clip's spectral landmarks: (keys, times), int64 each; times in hops from the clip's start."""
    hop = int(round(LANDMARK_HOP_SECONDS * sample_rate))
    window = int(round(LANDMARK_WINDOW * sample_rate / 16000))
    if len(audio) < window:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    frames = np.lib.stride_tricks.sliding_window_view(audio.astype(np.float32), window)[::hop]
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(window).astype(np.float32), axis=1))
    level = np.log(spectrum[:, LANDMARK_BINS[0]:LANDMARK_BINS[1]] + 1e-6)
    peaks = (level == maximum_filter(level, size=LANDMARK_PEAK_SIZE)) & (level > np.median(level) + LANDMARK_PEAK_ABOVE)
    times, bins = np.nonzero(peaks)  # row-major: sorted by time
    bins = bins // 2  # 62.5 Hz: re-encoding moves a peak by a bin now and then
    keys, anchors = [], []
    for step in range(1, LANDMARK_FAN_OUT + 1):
        gap = times[step:] - times[:-step]
        keep = (gap >= 1) & (gap <= LANDMARK_MAX_GAP)
        keys.append(((bins[:-step] * 64 + bins[step:]) * 64 + gap)[keep])
        anchors.append(times[:-step][keep])
    return np.concatenate(keys).astype(np.int64), np.concatenate(anchors).astype(np.int64)


def candidate_pairs(prints: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of clips whose landmarks agree CANDIDATE_MIN_VOTES times at one time offset."""
    if len(prints) < 2:
        return []
    keys = np.concatenate([k for k, _ in prints])
    times = np.concatenate([t for _, t in prints])
    clips = np.concatenate([np.full(len(k), n, np.int64) for n, (k, _) in enumerate(prints)])
    order = np.argsort(keys, kind="stable")
    keys, times, clips = keys[order], times[order], clips[order]
    # every pair of entries that share a key (a sort-merge self-join, written with numpy), in parts by the first
    # clip of the pair, so that memory stays bounded (a pair's votes all fall in one part)
    first = np.searchsorted(keys, keys, "left")
    counts = np.searchsorted(keys, keys, "right") - first
    span = 2 * int(times.max(initial=0)) + 3  # offsets -max..max, plus a bin either side
    n_parts = max(1, int(np.ceil(counts.sum() / JOIN_PAIRS_PER_PART)))
    found = []
    for part in range(n_parts):
        left = np.flatnonzero(clips % n_parts == part)
        repeats = counts[left]
        right = np.repeat(first[left], repeats) + np.arange(repeats.sum()) - np.repeat(np.cumsum(repeats) - repeats, repeats)
        left = np.repeat(left, repeats)
        mine, theirs = clips[left], clips[right]
        keep = mine < theirs
        code = (mine[keep] * len(prints) + theirs[keep]) * span + (times[right] - times[left])[keep] + span // 2
        codes, votes = np.unique(code, return_counts=True)
        near = votes.copy()  # votes at the offset and its two neighbours: a re-timed copy straddles two hops
        for step in (-1, 1):
            at = np.minimum(np.searchsorted(codes, codes + step), len(codes) - 1)
            same = codes[at] == codes + step
            near[same] += votes[at[same]]
        found.append(np.unique(codes[near >= CANDIDATE_MIN_VOTES] // span))
    pairs = np.unique(np.concatenate(found))
    return [(int(p // len(prints)), int(p % len(prints))) for p in pairs]


def _sliding_correlation(probe: np.ndarray, signal: np.ndarray) -> float:
    """The best |Pearson correlation| of a standardised probe (P,) with any window of signal (L,), by FFT."""
    size = 1 << int(np.ceil(np.log2(len(signal) + len(probe))))
    products = np.fft.irfft(np.fft.rfft(signal, size) * np.conj(np.fft.rfft(probe, size)), size)
    windows = len(signal) - len(probe) + 1
    sums = np.cumsum(np.r_[0.0, signal])
    squares = np.cumsum(np.r_[0.0, signal ** 2])
    window_sum = sums[len(probe):len(probe) + windows] - sums[:windows]
    window_squares = squares[len(probe):len(probe) + windows] - squares[:windows]
    # each window minus its own mean: the probe sums to zero, so only the norm needs it
    norms = np.sqrt(np.maximum(window_squares - window_sum ** 2 / len(probe), 1e-12))
    return float((np.abs(products[:windows]) / norms).max() / np.linalg.norm(probe))


def _probe(signal: np.ndarray, sample_rate: int) -> np.ndarray | None:
    """The middle PROBE_SECONDS of a signal, standardised; None when it is shorter than that, or silent."""
    size = int(PROBE_SECONDS * sample_rate)
    if len(signal) < size:
        return None
    middle = signal[(len(signal) - size) // 2:][:size]
    middle = middle - middle.mean()
    return middle / np.linalg.norm(middle) if np.linalg.norm(middle) > 1e-6 else None


def find_copies(prints: dict[str, tuple[np.ndarray, np.ndarray]], groups: list[list[str]], load_audio,
                sample_rate: int) -> dict[str, tuple[str, float]]:
    """Copies among the clips of each group (a speaker's clips): clip_id -> (the clip it copies, correlation).
    Of a pair, the later clip id is the copy. `load_audio(clip_id)` gives the waveform at sample_rate (a lower
    rate loses copies whose samples sit half a sample apart)."""
    load = lru_cache(maxsize=32)(lambda clip_id: load_audio(clip_id).astype(np.float64))
    copies: dict[str, tuple[str, float]] = {}
    for clips in groups:
        clips = sorted(clips)
        for first, later in candidate_pairs([prints[c] for c in clips]):
            if clips[later] in copies:
                continue
            waves = load(clips[first]), load(clips[later])
            scores = [_sliding_correlation(probe, other)
                      for probe, other in ((_probe(waves[1], sample_rate), waves[0]), (_probe(waves[0], sample_rate), waves[1]))
                      if probe is not None and len(other) >= len(probe)]
            if scores and max(scores) >= DUPLICATE_MIN_CORRELATION:
                copies[clips[later]] = (clips[first], round(max(scores), 3))
    return copies
