"""Vertex regions of the MediaPipe face mesh (468/478 points), as plain index data, and the distances
measured on them. No MediaPipe import: metrics, plots and the model read these without loading it.

The lip and eye sets are MediaPipe's own (`mp.solutions.face_mesh.FACEMESH_LIPS` etc.; a test checks
that they still match). UPPER_FACE is every vertex of the reference mesh (a2m_lib/assets) at or above
the lower eyelids: eyes, brows, forehead and the top of the nose, the region CodeTalker's upper-face
dynamics deviation (FDD) is measured on.
"""
from __future__ import annotations

import numpy as np

N_LANDMARKS_REFINED = 478
N_LANDMARKS = 468  # AniPortrait's set: the refined mesh without the 10 iris points

LIPS = np.array([0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181, 185, 191, 267,
                 269, 270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409, 415])
INNER_LIPS = np.array([13, 14, 78, 80, 81, 82, 87, 88, 95, 178, 191, 308, 310, 311, 312, 317, 318, 324, 402, 415])
LEFT_EYE = np.array([249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466])
RIGHT_EYE = np.array([7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246])
EYES = np.concatenate([RIGHT_EYE, LEFT_EYE])
UPPER_FACE = np.array([
    6, 7, 8, 9, 10, 21, 25, 27, 28, 29, 30, 33, 35, 46, 52, 53, 54, 55, 56, 63, 65, 66, 67, 68, 69, 70, 71, 103, 104,
    105, 107, 108, 109, 112, 113, 122, 124, 130, 133, 139, 144, 145, 151, 153, 154, 155, 156, 157, 158, 159, 160,
    161, 162, 163, 168, 173, 189, 190, 193, 221, 222, 223, 224, 225, 226, 243, 244, 245, 246, 247, 249, 251, 255,
    257, 258, 259, 260, 263, 276, 282, 283, 284, 285, 286, 293, 295, 296, 297, 298, 299, 300, 301, 332, 333, 334,
    336, 337, 338, 341, 342, 351, 353, 359, 362, 368, 373, 374, 380, 381, 382, 383, 384, 385, 386, 387, 388, 389,
    390, 398, 413, 414, 417, 441, 442, 443, 444, 445, 446, 463, 464, 465, 466, 467])
# Forehead, nose bridge, eye corners and temples: points that speech does not move (pose removal fits these).
STABLE = np.array([10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 33, 133, 362, 263,
                   127, 356, 234, 454, 21, 251, 103, 332, 109, 338, 67, 297])

UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14
UPPER_OUTER_LIP, LOWER_OUTER_LIP = 0, 17
MOUTH_CORNERS = (61, 291)
INNER_MOUTH_CORNERS = (78, 308)
# The lips' contours as closed loops (MediaPipe's FACEMESH_LIPS edges, in order): the viewer draws them, so that the
# gap between the upper and the lower inner lip is the mouth's opening.
OUTER_LIP_LOOP = np.array([61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146, 61])
INNER_LIP_LOOP = np.array([78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95, 78])
# Upper-to-lower lip pairs along the inner and the outer contour (MediaPipe's FACEMESH_LIPS, a vertex of the upper
# lip and the one below it), then the mouth's two widths: the distances the lip-gap loss (a2m_lib.losses) keeps.
# Every lip vertex but the corners is in a pair, so the loss holds the whole contour, not three points of it.
LIP_GAP_PAIRS = np.array([
    (191, 95), (80, 88), (81, 178), (82, 87), (13, 14), (312, 317), (311, 402), (310, 318), (415, 324),   # inner
    (185, 146), (40, 91), (39, 181), (37, 84), (0, 17), (267, 314), (269, 405), (270, 321), (409, 375),  # outer
    MOUTH_CORNERS, INNER_MOUTH_CORNERS])
EYE_LIDS = ((159, 145), (386, 374))  # (upper, lower) per eye
EYE_CORNERS_OUTER = (33, 263)
CHIN, FOREHEAD = 152, 10


def mouth_opening(meshes: np.ndarray) -> np.ndarray:
    """Inner-lip gap in mesh units, (..., N, 3) -> (...)."""
    return np.linalg.norm(meshes[..., LOWER_INNER_LIP, :] - meshes[..., UPPER_INNER_LIP, :], axis=-1)


def eye_opening(meshes: np.ndarray) -> np.ndarray:
    """Mean upper-to-lower eyelid gap of both eyes in mesh units, (..., N, 3) -> (...)."""
    gaps = [np.linalg.norm(meshes[..., lower, :] - meshes[..., upper, :], axis=-1) for upper, lower in EYE_LIDS]
    return (gaps[0] + gaps[1]) / 2

# The mouth as a2m_lib.sync measures it: (landmark, landmark) distances: inner and outer opening, the two widths,
# nose to chin.
MOUTH_DISTANCES = ((13, 14), (0, 17), (61, 291), (78, 308), (1, 152))
