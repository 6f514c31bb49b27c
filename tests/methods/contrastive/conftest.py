"""Toy two-modality "bodies" with a known rigid DXA -> MR map, for fast tests.

A subject is a body ellipse with random Gaussian blobs of three tissue types (bone,
fat, water) at subject-specific places. The DXA shows bone and soft-tissue channels,
the MR fat and water channels, so the two modalities share anatomy but no intensity
map. The MR has a smaller field of view and is rotated and shifted by ``truth``
(DXA world -> MR world, 3x3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from mmreg.imaging.image import Image
from mmreg.methods.contrastive.geometry import apply, rigid


@dataclass(frozen=True)
class ToyPair:
    subject: str
    dxa: Image  # (X, Y, 2): bone, tissue
    mr: Image  # (X, Y, 2): fat, water
    truth: np.ndarray  # 3x3, DXA world -> MR world
    points: np.ndarray  # (N, 2) DXA world test points inside the body

    @property
    def initial_error(self) -> float:
        return self.error(np.eye(3))

    def error(self, dxa_to_mr: np.ndarray) -> float:
        """Mean distance (mm) between the estimated and true images of the test points."""
        return float(
            np.linalg.norm(
                apply(dxa_to_mr, self.points) - apply(self.truth, self.points), axis=1
            ).mean()
        )


def _anatomy(seed: int, n_blobs: int = 28) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "centre": rng.uniform([-45, -110], [45, 110], size=(n_blobs, 2)),
        "width": rng.uniform(6, 16, size=n_blobs),
        "kind": rng.integers(0, 3, size=n_blobs),  # 0 bone, 1 fat, 2 water
        "amp": rng.uniform(0.5, 1.0, size=n_blobs),
        "axes": np.array([65.0, 135.0]) * rng.uniform(0.92, 1.08, size=2),
    }


def _channels(anatomy: dict[str, np.ndarray], xy: np.ndarray, modality: str) -> np.ndarray:
    body = ((xy / anatomy["axes"]) ** 2).sum(-1)
    inside = 1.0 / (1.0 + np.exp((body - 1.0) * 25.0))
    maps = np.zeros((3, *xy.shape[:-1]))
    for c, w, k, a in zip(
        anatomy["centre"], anatomy["width"], anatomy["kind"], anatomy["amp"], strict=True
    ):
        maps[k] += a * np.exp(-(((xy - c) ** 2).sum(-1)) / (2 * w**2))
    bone, fat, water = (np.clip(m, 0, 1.5) * inside for m in maps)
    if modality == "dxa":
        return np.stack([bone, inside * (0.4 + 0.3 * water + 0.2 * fat)], axis=-1)
    rim = inside * np.exp(-((body - 0.85) ** 2) / 0.01)
    return np.stack(
        [np.clip(fat + 0.6 * rim, 0, None), inside * (0.2 + 0.7 * water) * (1 - 0.5 * bone)],
        axis=-1,
    )


def _grid(shape: tuple[int, int], spacing: float) -> np.ndarray:
    affine = np.diag([spacing, spacing, 1.0, 1.0])
    affine[:2, 3] = -spacing * (np.asarray(shape) - 1) / 2
    return affine


def toy_pair(
    seed: int,
    *,
    angle: float = 0.0,
    shift: tuple[float, float] = (0.0, 0.0),
    spacing: float = 4.0,
    dxa_shape: tuple[int, int] = (40, 80),
    mr_shape: tuple[int, int] = (32, 64),
) -> ToyPair:
    anatomy = _anatomy(seed)
    a_d, a_m = _grid(dxa_shape, spacing), _grid(mr_shape, spacing)
    truth = rigid(angle, shift)
    ij = np.indices(dxa_shape).reshape(2, -1).T
    xy_d = (ij * spacing + a_d[:2, 3]).reshape(*dxa_shape, 2)
    ij = np.indices(mr_shape).reshape(2, -1).T
    xy_m = ij * spacing + a_m[:2, 3]
    body_m = apply(np.linalg.inv(truth), xy_m).reshape(*mr_shape, 2)
    dxa = Image(_channels(anatomy, xy_d, "dxa").astype(np.float32), a_d)
    mr = Image(_channels(anatomy, body_m, "mr").astype(np.float32), a_m)
    points = np.array([[0, 0], [30, 60], [-30, -60], [-25, 70], [25, -70], [0, 100.0]])
    return ToyPair(f"toy{seed}", dxa, mr, truth, points)


@pytest.fixture(scope="session")
def toy_cohort() -> list[ToyPair]:
    """Eight toy subjects, MR misaligned by up to 6 degrees and 12 mm."""
    rng = np.random.default_rng(7)
    return [
        toy_pair(100 + k, angle=float(rng.uniform(-6, 6)), shift=tuple(rng.uniform(-12, 12, 2)))
        for k in range(8)
    ]


def same_modality_pair(seed: int, *, angle: float, shift: tuple[float, float]) -> ToyPair:
    """A toy pair whose "MR" shows the DXA channels: any shared encoder aligns it."""
    pair = toy_pair(seed, angle=angle, shift=shift)
    shape = pair.mr.shape[:2]
    ij = np.indices(shape).reshape(2, -1).T
    xy = ij * 4.0 + pair.mr.affine[:2, 3]
    body = apply(np.linalg.inv(pair.truth), xy).reshape(*shape, 2)
    data = _channels(_anatomy(seed), body, "dxa").astype(np.float32)
    return ToyPair(pair.subject, pair.dxa, Image(data, pair.mr.affine), pair.truth, pair.points)


@pytest.fixture(scope="session")
def shared_encoder_model(tmp_path_factory: pytest.TempPathFactory):
    """A stride-1 dual encoder with identical DXA and MR weights, saved as a checkpoint.

    Untrained, but exactly translation-equivariant and the same for both inputs, so on
    :func:`same_modality_pair` images the registration geometry must come out right.
    """
    import torch

    from mmreg.methods.contrastive.model import ContrastiveConfig, DualEncoder
    from mmreg.methods.contrastive.train import save_contrastive

    torch.manual_seed(0)
    model = DualEncoder(ContrastiveConfig(widths=(8,), embed_dim=16, spacing_mm=4.0, norm="none"))
    model.encoders["mr"].load_state_dict(model.encoders["dxa"].state_dict())
    model.heads["mr"].load_state_dict(model.heads["dxa"].state_dict())
    path = tmp_path_factory.mktemp("models") / "shared.pt"
    save_contrastive(path, model.eval(), {"note": "test model"})
    return path
