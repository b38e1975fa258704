"""A prediction in 3D with its sound, as one HTML file that opens offline in a browser (no server):

    a2m view PREDICTION.npz --out view.html      # an `a2m predict` output, or a run's predictions/<clip>.npz
    html = viewer.page(PREDICTION.npz)            # the same page as text (notebook 05 shows it inline)

The model's mesh and, when the file has one, the truth beside it: every vertex, the face's wireframe, and the
lips' outer and inner contours in red, so that the mouth's opening is the gap between the two inner lines. Drag to
rotate, scroll to zoom; play/pause and a frame scrubber under it. The drawing is three.js (its module files, MIT,
ship in a2m_lib/assets/viewer/ at THREE_VERSION, each pinned by SHA-256 and read into the page through an import
map of data: URLs); the audio is a WAV in an <audio> element. Written by hand: only the page's glue, which no library
has: the meshes as 16-bit numbers in the page, and the sync, each animation frame drawing the mesh of the audio
element's current time, so picture and sound cannot drift apart.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import wave
from pathlib import Path

import numpy as np

from . import files, regions
from .mesh import mesh_edges

ASSETS = Path(__file__).parent / "assets" / "viewer"
THREE_VERSION = "0.170.0"
PINNED = {"three.module.min.js": "08fd7545d13d2c7fb65ab691530a802dafefd638596501854f267d0fb13c39e7",
          "OrbitControls.js": "80efaadea4f8a636a65fb0bd08bfef62f3d93a0bb94e2e7500f23176c5c07f4e"}
SCALE = 1000  # mesh units to the page's 16-bit integers: 0.001 units (~0.01 mm)


class ViewError(ValueError):
    """A file the viewer cannot show; the message names it and the fix."""


def _asset(name: str) -> str:
    data = (ASSETS / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != PINNED[name]:
        raise ViewError(f"{ASSETS / name} is not three.js {THREE_VERSION} as pinned (SHA-256 differs); reinstall a2m")
    return "data:text/javascript;base64," + base64.b64encode(data).decode()


def read_prediction(path) -> dict:
    """{meshes: {name: (T, V, 3)}, fps, audio, sample_rate, title} from either kind of prediction file."""
    path = Path(path)
    if not path.exists():
        raise ViewError(f"{path} does not exist; give an `a2m predict` output or a clip's prediction file of a run's "
                        f"evaluation")
    with np.load(path) as data:
        content = {key: data[key] for key in data.files}
    if "audio" not in content:
        raise ViewError(f"{path} holds no audio (written before a2m kept the audio in prediction files); run "
                        f"`a2m predict` or `a2m evaluate` again to write it")
    fps = float(content["fps"])
    if "verts" in content:  # a2m predict
        meshes = {"model": content["verts"]}
        title = f"{path.stem}: {str(content.get('speaker', ''))}"
    else:  # evaluation: model and truth on the clip's valid frames; a frame without a face shows the one before
        frames = content["frames"].astype(int)
        n_frames = int(frames.max()) + 1
        where = np.clip(np.searchsorted(frames, np.arange(n_frames), side="right") - 1, 0, len(frames) - 1)
        meshes = {"truth": content["truth"][where], "model": content["model"][where]}
        title = f"{str(content['clip_id'])} ({str(content['speaker'])})"
    return dict(meshes=meshes, fps=fps, audio=content["audio"].astype(np.float32),
                sample_rate=int(content.get("sample_rate", 16000)), title=title)


def wireframe() -> np.ndarray:
    """The face's edges (mesh.mesh_edges) without those across the mouth: the opening stays open to the eye."""
    edges = mesh_edges()
    inner = set(regions.INNER_LIP_LOOP.tolist())
    along = {tuple(sorted(pair)) for pair in zip(regions.INNER_LIP_LOOP[:-1], regions.INNER_LIP_LOOP[1:])}
    across = [a in inner and b in inner and (min(a, b), max(a, b)) not in along for a, b in edges.tolist()]
    return edges[~np.array(across)]


def _wav(audio: np.ndarray, sample_rate: int) -> str:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2").tobytes())
    return "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode()


def _pack(meshes: np.ndarray) -> str:
    """(T, V, 3) -> base64 of little-endian int16 at SCALE, centred on the sequence's mean."""
    centre = np.nanmean(meshes.reshape(-1, 3), axis=0)
    quantised = np.clip(np.round(np.nan_to_num(meshes - centre) * SCALE), -32768, 32767).astype("<i2")
    return base64.b64encode(quantised.tobytes()).decode()


def page(prediction) -> str:
    """The viewer's HTML for a prediction file (see the module docstring)."""
    shown = read_prediction(prediction)
    n_frames = min(len(mesh) for mesh in shown["meshes"].values())
    n_vertices = regions.N_LANDMARKS
    inner = regions.INNER_LIP_LOOP
    data = dict(fps=shown["fps"], frames=n_frames, vertices=n_vertices, scale=SCALE, title=shown["title"],
                edges=wireframe().ravel().tolist(), outer=regions.OUTER_LIP_LOOP.tolist(), inner=inner.tolist(),
                mouth=[int(v) for i in range(1, len(inner) - 2) for v in (inner[0], inner[i], inner[i + 1])],
                meshes={name: _pack(mesh[:n_frames, :n_vertices]) for name, mesh in shown["meshes"].items()})
    imports = {"three": _asset("three.module.min.js"), "three/addons/OrbitControls.js": _asset("OrbitControls.js")}
    return (TEMPLATE.replace("__TITLE__", html.escape(shown["title"]))
            .replace("__IMPORTS__", json.dumps({"imports": imports}))
            .replace("__AUDIO__", _wav(shown["audio"], shown["sample_rate"]))
            .replace("__DATA__", json.dumps(data)))


def write_html(prediction, out) -> Path:
    out = Path(out)
    return files.write_text(out, page(prediction))


TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>a2m: __TITLE__</title>
<style>
body { font-family: sans-serif; margin: 8px; background: #fafafa; }
#stage { position: relative; width: 960px; height: 560px; border: 1px solid #ccc; background: #fff; }
.label { position: absolute; top: 6px; font-size: 14px; color: #333; }
#controls { margin-top: 6px; display: flex; gap: 10px; align-items: center; }
#scrub { width: 700px; }
</style>
<script type="importmap">__IMPORTS__</script>
</head><body>
<div><b>__TITLE__</b> &middot; drag to rotate, scroll to zoom; red: the lips, dark: the mouth's opening</div>
<div id="stage"></div>
<div id="controls"><button id="play">play</button><input id="scrub" type="range" min="0" value="0" step="1">
<span id="clock">0.00 s</span></div>
<audio id="audio" preload="auto" src="__AUDIO__"></audio>
<script type="module">
import * as THREE from "three";
import { OrbitControls } from "three/addons/OrbitControls.js";
const DATA = __DATA__;
const stage = document.getElementById("stage"), audio = document.getElementById("audio");
const scrub = document.getElementById("scrub"), clock = document.getElementById("clock"), play = document.getElementById("play");
scrub.max = DATA.frames - 1;
function decode(text) {  // base64 int16 -> Float32Array of mesh units, y and z flipped to the screen's up and out
  const bytes = Uint8Array.from(atob(text), c => c.charCodeAt(0));
  const ints = new Int16Array(bytes.buffer), out = new Float32Array(ints.length);
  for (let i = 0; i < ints.length; i++) out[i] = ints[i] / DATA.scale * (i % 3 === 0 ? 1 : -1);
  return out;
}
const renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
renderer.setSize(stage.clientWidth, stage.clientHeight);
stage.appendChild(renderer.domElement);
const scene = new THREE.Scene();
scene.background = new THREE.Color(0xffffff);
const names = Object.keys(DATA.meshes);
const camera = new THREE.PerspectiveCamera(30, stage.clientWidth / stage.clientHeight, 0.1, 500);
camera.position.set(0, 0, 38);
const controls = new OrbitControls(camera, renderer.domElement);
const V = DATA.vertices, step = 3 * V, spacing = 18;
const segments = loop => loop.slice(1).flatMap((v, i) => [loop[i], v]);  // a closed loop as line segments
const faces = names.map((name, k) => {
  const frames = decode(DATA.meshes[name]), positions = new Float32Array(step);
  const geometry = new THREE.BufferGeometry();
  geometry.setAttribute("position", new THREE.BufferAttribute(positions, 3));
  const group = new THREE.Group();
  group.position.x = (k - (names.length - 1) / 2) * spacing;
  const wire = new THREE.LineSegments(geometry.clone(), new THREE.LineBasicMaterial({ color: 0xc8c8c8 }));
  wire.geometry.setIndex(DATA.edges);
  wire.geometry.setAttribute("position", geometry.getAttribute("position"));
  const shared = (index, object) => { object.geometry.setIndex(index); object.geometry.setAttribute("position", geometry.getAttribute("position")); return object; };
  const outer = shared(segments(DATA.outer), new THREE.LineSegments(geometry.clone(), new THREE.LineBasicMaterial({ color: 0xee3333 })));
  const inner = shared(segments(DATA.inner), new THREE.LineSegments(geometry.clone(), new THREE.LineBasicMaterial({ color: 0x990000 })));
  // the opening, filled dark: it shrinks to nothing when the lips close
  const mouth = shared(DATA.mouth, new THREE.Mesh(geometry.clone(), new THREE.MeshBasicMaterial({ color: 0x3a0a0a, side: THREE.DoubleSide })));
  const points = new THREE.Points(geometry, new THREE.PointsMaterial({ color: name === "truth" ? 0x333333 : 0x1f5fbf, size: 0.18 }));
  const parts = [wire, outer, inner, mouth, points];
  for (const part of parts) part.frustumCulled = false;  // they move: never culled by a stale bound
  group.add(...parts);
  scene.add(group);
  const label = document.createElement("div");
  label.className = "label"; label.textContent = name;
  label.style.left = `${(k + 0.5) / names.length * 100 - 3}%`;
  stage.appendChild(label);
  return { frames, positions, geometry };
});
let shown = -1;
function show(frame) {  // the mesh of `frame` on every face
  frame = Math.max(0, Math.min(DATA.frames - 1, frame));
  if (frame === shown) return;
  for (const face of faces) {
    face.positions.set(face.frames.subarray(frame * step, (frame + 1) * step));
    face.geometry.getAttribute("position").needsUpdate = true;
  }
  shown = frame;
  scrub.value = frame;
  clock.textContent = `${(frame / DATA.fps).toFixed(2)} s, frame ${frame}`;
}
// The sync, by hand: every animation frame shows the mesh of the audio's current time (frame t spans t/fps to
// (t+1)/fps), whether the audio plays, is paused or was scrubbed.
function loop() {
  show(Math.floor(audio.currentTime * DATA.fps + 1e-6));
  controls.update();
  renderer.render(scene, camera);
  requestAnimationFrame(loop);
}
scrub.addEventListener("input", () => { audio.currentTime = (Number(scrub.value) + 0.5) / DATA.fps; show(Number(scrub.value)); });
play.addEventListener("click", () => { if (audio.paused) audio.play(); else audio.pause(); });
audio.addEventListener("play", () => play.textContent = "pause");
audio.addEventListener("pause", () => play.textContent = "play");
show(0);
loop();
window.a2mViewer = { ready: true, frame: () => shown, frames: DATA.frames, fps: DATA.fps, faces: names };
</script>
</body></html>
"""
