"""Audio and video I/O: the ffmpeg binary that imageio-ffmpeg ships (no system ffmpeg needed), and PyAV
(FFmpeg's libraries, in process) for the frames that extraction streams through FaceMesh."""
from __future__ import annotations

import queue
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import av
import imageio_ffmpeg
import numpy as np
import soundfile

from . import files


class MediaError(RuntimeError):
    """A media file that cannot be read; the message names the file and the reason."""


def ffmpeg_exe() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


def probe_streams(path: str | Path) -> dict:
    """Which streams a file has, parsed from `ffmpeg -i` (imageio-ffmpeg ships no ffprobe)."""
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    text = proc.stderr
    if "Invalid data found" in text or "could not find codec parameters" in text.lower() or "moov atom not found" in text:
        raise MediaError(f"{path}: not a readable media file (ffmpeg: {text.strip().splitlines()[-1]})")
    if "No such file" in text:
        raise MediaError(f"{path}: file not found")
    return {
        "has_video": " Video: " in text,
        "has_audio": " Audio: " in text,
    }


def read_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Decode the first audio stream to mono float32 at `sample_rate` Hz, on the video's clock.

    `aresample=async=1:first_pts=0` pads with silence wherever the stream's timestamps say so, so an
    audio track that starts 0.2 s after the video (stream start time, edit list) starts 0.2 s late here
    too, instead of being glued to frame 0.
    """
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(path), "-vn",
           "-af", "aresample=async=1:first_pts=0", "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "pipe:1"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise MediaError(f"{path}: cannot decode audio ({proc.stderr.decode(errors='replace').strip()[-300:]})")
    return np.frombuffer(proc.stdout, dtype=np.float32)  # read-only view of the bytes: no second copy


class FrameReader:
    """A video's RGB frames, resampled to `fps` by timestamp (ffmpeg's fps filter), decoded ahead in a thread.

        with FrameReader(path, 30) as frames:
            for frame, repeated in frames: ...

    Decoding runs in this process through PyAV (FFmpeg's libraries) with the same filters the ffmpeg
    command line would use: the rotation the container asks for (phone videos), then the fps filter. In
    process rather than through an ffmpeg pipe, because piping 3 bytes a pixel costs as much CPU as the
    decoding itself (0.90 against 0.47 ms a frame at 512x512, benchmarks/README.md), and that CPU is taken
    from FaceMesh.

    Decoding starts when the reader is made, so a reader made for the next video while the current one is
    being tracked has its first frames ready when they are wanted. `repeated` is True when the fps filter
    repeats the previous frame (to raise 25 fps to 30, say): the caller can reuse its previous result, and
    the frame is not converted again. At most `buffer_mb` of decoded frames (at least 2 frames, at most 16)
    wait in memory, whatever the video's length.
    """

    def __init__(self, path: str | Path, fps: float, buffer_mb: float = 64):
        self.path, self.fps = path, fps
        try:
            self._container = av.open(str(path))
            self._stream = self._container.streams.video[0]
        except (av.FFmpegError, IndexError) as error:
            raise MediaError(f"{path}: cannot decode video ({error})") from error
        self._stream.thread_type = "AUTO"  # FFmpeg's own decoding threads, as many as this process's CPUs
        self.decode_errors = 0
        frame_mb = max(self._stream.codec_context.width * self._stream.codec_context.height * 3 / 2**20, 1e-6)
        self._frames: queue.Queue = queue.Queue(maxsize=int(min(16, max(2, buffer_mb // frame_mb))))
        self._stop = threading.Event()
        self._done = object()
        self._thread = threading.Thread(target=self._produce, daemon=True, name="a2m-decode")
        self._thread.start()

    def _filters(self, first: av.VideoFrame) -> av.filter.Graph:
        """buffer -> rgb24 -> rotation -> fps -> sink. With the fps filter last, a repeated frame is the very
        same buffer as the one before it, so repeats are found by address, not by comparing pixels."""
        graph = av.filter.Graph()
        rotation = round(first.rotation or 0) % 360  # counter-clockwise, as the container's display matrix says
        turns = {90: [("transpose", "cclock")], 180: [("hflip", None), ("vflip", None)], 270: [("transpose", "clock")]}
        chain = [graph.add_buffer(template=self._stream), graph.add("format", "rgb24"),
                 *[graph.add(name, argument) for name, argument in turns.get(rotation, [])],
                 graph.add("fps", f"{self.fps}"), graph.add("buffersink")]
        for upstream, downstream in zip(chain[:-1], chain[1:]):
            upstream.link_to(downstream)
        graph.configure()
        return graph

    def _produce(self) -> None:
        graph, previous, previous_array = None, None, None

        def drain() -> bool:
            nonlocal previous, previous_array
            while True:
                try:
                    frame = graph.vpull()
                except (av.error.BlockingIOError, av.error.EOFError):
                    return True
                repeated = previous is not None and frame.planes[0].buffer_ptr == previous.planes[0].buffer_ptr
                array = previous_array if repeated else frame.to_ndarray()
                previous, previous_array = frame, array
                self._frames.put((array, repeated))
                if self._stop.is_set():
                    return False

        try:
            for packet in self._container.demux(self._stream):
                try:
                    decoded = packet.decode()
                except av.error.InvalidDataError:  # a damaged packet: skip it, as the ffmpeg command line does
                    self.decode_errors += 1
                    continue
                for frame in decoded:
                    graph = graph or self._filters(frame)
                    graph.vpush(frame)
                    if not drain():
                        return
            if graph is not None:
                graph.vpush(None)
                drain()
        except Exception as error:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._frames.put(error)
        finally:
            self._frames.put(self._done)

    def __iter__(self) -> Iterator[tuple[np.ndarray, bool]]:
        while (item := self._frames.get()) is not self._done:
            if isinstance(item, Exception):
                raise MediaError(f"{self.path}: decoding failed ({item})") from item
            yield item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                self._frames.get_nowait()
            except queue.Empty:
                self._thread.join(0.01)
        self._container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def iter_frames(path: str | Path, fps: float) -> Iterator[np.ndarray]:
    """Stream RGB frames resampled to `fps` by timestamp, one at a time (see FrameReader)."""
    with FrameReader(path, fps) as frames:
        for frame, _ in frames:
            yield frame


def write_video(path: str | Path, frames: np.ndarray, fps: float, audio: np.ndarray | None, sample_rate: int) -> None:
    """Write an H.264 + AAC mp4 atomically (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = files.part_path(path.with_suffix(".wav")) if audio is not None else None
    height, width = frames.shape[1:3]
    try:
        if wav is not None:
            soundfile.write(wav, audio, sample_rate, subtype="PCM_16")
        with files.atomic_path(path) as tmp:
            writer = imageio_ffmpeg.write_frames(
                str(tmp), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=None,
                output_params=["-crf", "18", "-preset", "veryfast"],
                audio_path=str(wav) if wav else None, audio_codec="aac" if wav else None,
                macro_block_size=1, ffmpeg_log_level="error",
            )
            writer.send(None)
            for frame in frames:
                writer.send(np.ascontiguousarray(frame))
            writer.close()
    finally:
        if wav is not None:
            wav.unlink(missing_ok=True)


def read_frame(path: str | Path, seconds: float) -> np.ndarray | None:
    """One RGB frame at `seconds` (for previews; extraction streams instead)."""
    reader = imageio_ffmpeg.read_frames(str(path), input_params=["-ss", f"{max(seconds, 0):.4f}"],
                                        output_params=["-frames:v", "1"])
    try:
        width, height = next(reader)["size"]
        raw = next(reader, None)
        return None if raw is None else np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
    finally:
        reader.close()
