"""a2m: a notebook-driven workbench for speech-driven 3D face mesh models (Audio2Mesh)."""
__version__ = "0.1.0"
