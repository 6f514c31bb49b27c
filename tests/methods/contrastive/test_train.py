"""Contrastive training: split, determinism, checkpoints, ``mmreg train`` records."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmreg.imaging.image import save_image
from mmreg.methods.contrastive.data import as_channels
from mmreg.methods.contrastive.features import load_model, similarity_matrix
from mmreg.methods.contrastive.train import (
    ContrastiveTrainSettings,
    PairImages,
    fit_contrastive,
    read_pairs,
    split_subjects,
    train_contrastive,
)
from mmreg.models import load_checkpoint
from mmreg.training import SEED_PROTOCOL

from .conftest import toy_pair

TINY = {
    "epochs": 2,
    "batch_size": 3,
    "widths": (4, 8),
    "embed_dim": 8,
    "spacing_mm": 8.0,
    "val_fraction": 0.34,
    "shared_levels": 1,
}


@pytest.fixture(scope="module")
def toy_images() -> list[PairImages]:
    pairs = [toy_pair(200 + k, angle=2.0, shift=(4.0, -3.0)) for k in range(6)]
    return [PairImages(p.subject, as_channels(p.dxa), as_channels(p.mr)) for p in pairs]


def test_split_subjects() -> None:
    train, val = split_subjects(20, 0.15, seed=3)
    assert len(val) == 3 and len(train) == 17
    assert sorted(train + val) == list(range(20))
    assert split_subjects(20, 0.15, seed=3) == (train, val)
    assert split_subjects(3, 0.5, seed=0)[1] == []  # too few to hold two out
    assert split_subjects(5, 0.0, seed=0)[1] == []
    assert split_subjects(5, 0.8, seed=0)[0].__len__() == 2  # two left to train on


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        ContrastiveTrainSettings(batch_size=1)
    with pytest.raises(ValueError, match="fixed_modality"):
        ContrastiveTrainSettings(fixed_modality="ct")
    # Every CLI field has help text; choices where the values are fixed.
    for f in dataclasses.fields(ContrastiveTrainSettings):
        if f.type in ("int", "float", "str"):
            assert f.metadata.get("help"), f.name
    pooling = {f.name: f for f in dataclasses.fields(ContrastiveTrainSettings)}["pooling"]
    assert pooling.metadata["choices"] == ("dense", "global")


def test_fit_is_deterministic_and_reports_validation(toy_images) -> None:
    settings = ContrastiveTrainSettings(**TINY)
    model_a, summary = fit_contrastive(toy_images, settings, progress=False)
    model_b, _ = fit_contrastive(toy_images, settings, progress=False)
    for (name, a), b in zip(
        model_a.state_dict().items(), model_b.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert (summary["n_train"], summary["n_val"]) == (4, 2)
    assert len(summary["history"]) == 2
    assert {"train_loss", "val_loss", "val_recall_at_1"} <= set(summary["history"][0])
    assert 1 <= summary["best_epoch"] <= 2
    assert not model_a.training


def test_global_baseline_trains(toy_images) -> None:
    settings = ContrastiveTrainSettings(**{**TINY, "pooling": "global"})
    model, _ = fit_contrastive(toy_images, settings, progress=False)
    assert model.config.pooling == "global"
    sim = similarity_matrix(model, [p.dxa for p in toy_images[:3]], [p.mr for p in toy_images[:3]])
    assert sim.shape == (3, 3) and np.all(np.abs(sim) <= 1 + 1e-6)


def test_train_contrastive_from_records_writes_a_loadable_checkpoint(tmp_path, toy_images) -> None:
    records = []
    for k in range(4):
        pair = toy_pair(300 + k)
        # The pair's "fixed" is the MR here, to exercise fixed_modality=mr.
        records.append(
            {
                "subject": f"{k:02d}",
                "session": None,
                "fixed": str(save_image(pair.mr, tmp_path / f"sub-{k:02d}_MR.nii.gz")),
                "moving": str(save_image(pair.dxa, tmp_path / f"sub-{k:02d}_DXA.nii.gz")),
            }
        )
    images = read_pairs(records, fixed_modality="mr")
    assert images[0].dxa.shape == (40, 80) and images[0].mr.shape == (32, 64)
    out = tmp_path / "model.pt"
    settings = ContrastiveTrainSettings(**{**TINY, "fixed_modality": "mr", "val_fraction": 0.5})
    assert train_contrastive(records, out=out, settings=settings, progress=False) == out
    checkpoint = load_checkpoint(out, method="contrastive")
    training = checkpoint.metadata["training"]
    assert training["n_subjects"] == 4
    assert (training["seed"], training["seed_protocol"]) == (0, SEED_PROTOCOL)
    assert not (tmp_path / "model.pt.state").exists()  # the resumable state is gone
    model, _ = load_model(out)
    sim = similarity_matrix(model, [p.dxa for p in images], [p.mr for p in images])
    assert sim.shape == (4, 4)


def test_similarity_matrix_equals_pairwise_similarities(toy_images) -> None:
    from mmreg.methods.contrastive.features import encode, prepare
    from mmreg.methods.contrastive.losses import dense_similarity
    from mmreg.methods.contrastive.model import ContrastiveConfig, DualEncoder

    torch.manual_seed(0)
    model = DualEncoder(ContrastiveConfig(widths=(4, 8), embed_dim=8, spacing_mm=8.0)).eval()
    dxas = [prepare(p.dxa) for p in toy_images[:3]]
    mrs = [prepare(p.mr) for p in toy_images[:3]]
    sim = similarity_matrix(model, dxas, mrs)
    for a, dxa in enumerate(dxas):
        fd = encode(model, dxa, "dxa")
        masked = fd.values * torch.from_numpy(fd.mask.astype(np.float32))
        for b, mr in enumerate(mrs):
            fm = encode(model, mr, "mr")
            mask = torch.from_numpy(fm.mask.astype(np.float32))[None, None]
            expected = dense_similarity(masked[None], fm.values[None], mask)
            assert sim[a, b] == pytest.approx(float(expected), abs=1e-5)
    rotated = similarity_matrix(model, dxas, mrs, angles=(-4.0, 0.0, 4.0))
    assert (rotated >= sim - 1e-6).all()


def test_an_interrupted_fit_resumes_from_its_state_file(tmp_path, toy_images) -> None:
    settings = ContrastiveTrainSettings(**{**TINY, "epochs": 3})
    full, _ = fit_contrastive(toy_images, settings, progress=False)
    state = tmp_path / "model.pt.state"

    def stop_at_epoch_2(record: dict[str, float]) -> None:
        if record["epoch"] == 2:
            raise KeyboardInterrupt  # after epoch 1's state was written

    with pytest.raises(KeyboardInterrupt):
        fit_contrastive(
            toy_images, settings, progress=False, on_epoch=stop_at_epoch_2, state_path=state
        )
    assert state.is_file()
    epochs: list[float] = []
    resumed, summary = fit_contrastive(
        toy_images,
        settings,
        progress=False,
        on_epoch=lambda r: epochs.append(r["epoch"]),
        state_path=state,
    )
    assert epochs == [2.0, 3.0]  # epoch 1 came from the state file
    assert [h["epoch"] for h in summary["history"]] == [1.0, 2.0, 3.0]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # Other settings: the state belongs to another run and is not used.
    _, other = fit_contrastive(
        toy_images,
        ContrastiveTrainSettings(**{**TINY, "epochs": 3, "seed": 1}),
        progress=False,
        state_path=state,
    )
    assert len(other["history"]) == 3
