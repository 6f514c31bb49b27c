"""DNS features (Mok et al. 2024): network, DNS layer, augmentation, loss, training."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch

from mmreg.errors import InputError
from mmreg.methods.features import dns as dns_module
from mmreg.methods.features.dns import (
    DNSConfig,
    DNSNet,
    dns_at,
    dns_layer,
    load_dns,
    normalise_for_dns,
)
from mmreg.methods.features.dns_train import (
    DNSTrainSettings,
    apply_curve,
    bezier_curve,
    info_nce,
    train_dns,
)

SMALL = DNSConfig(channels=(4, 8), features=6)


@pytest.mark.parametrize("size", [(9, 10, 11), (7, 5, 13), (16, 16, 16)])
def test_output_shape_for_any_size(size):
    net = DNSNet(SMALL).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, *size))
    assert out.shape == (2, 6, *size)
    assert torch.isfinite(out).all()


def test_dense_point_and_no_grad_paths_agree():
    torch.manual_seed(0)
    net = DNSNet(DNSConfig(channels=(4, 8, 16), features=5))
    x = torch.rand(1, 1, 9, 12, 7)
    dense = net(x)
    with torch.no_grad():
        slabs = net(x)
    grid = torch.meshgrid(*[torch.arange(s) for s in x.shape[2:]], indexing="ij")
    points = torch.stack(grid, -1).reshape(1, -1, 3)
    at = net.features_at(x, points).transpose(1, 2).reshape(dense.shape)
    assert torch.allclose(dense, slabs, atol=1e-5)
    assert torch.allclose(dense, at, atol=1e-5)


def test_dns_layer_is_self_similarity():
    torch.manual_seed(1)
    f = torch.randn(2, 3, 8, 9, 10)
    out = dns_layer(f)
    assert out.shape == (2, 3 * 24, 8, 9, 10)
    assert float(out.min()) > 0 and float(out.max()) <= 1
    shift = torch.randn(1, 3, 1, 1, 1)  # a constant per channel
    assert torch.allclose(dns_layer(f + shift), out, atol=1e-5)
    points = torch.tensor([[[0, 0, 0], [3, 4, 5], [7, 8, 9]]]).expand(2, -1, -1)
    direct = out.flatten(2)[:, :, [0, (3 * 9 + 4) * 10 + 5, 8 * 9 * 10 - 1]].transpose(1, 2)
    assert torch.allclose(dns_at(f, points), direct, atol=1e-6)


def test_bezier_curves_are_monotone_and_fixed_at_the_ends():
    gen = torch.Generator().manual_seed(0)
    x = torch.linspace(0, 1, 1001)
    for _ in range(50):
        xs, ys = bezier_curve(torch.rand(2, 2, generator=gen))
        y = apply_curve(x, xs, ys)
        assert float(y[0]) == pytest.approx(0.0, abs=1e-6)
        assert float(y[-1]) == pytest.approx(1.0, abs=1e-6)
        assert bool((y[1:] >= y[:-1] - 1e-6).all())


def test_info_nce_limits():
    torch.manual_seed(2)
    n = 64
    same = torch.randn(n, 16)
    loss, acc = info_nce(same, same, tau=0.01)
    assert float(loss) < 1e-3 and float(acc) == 1.0
    a, b = torch.randn(n, 4096), torch.randn(n, 4096)
    loss, _ = info_nce(a, b, tau=1.0)
    assert float(loss) == pytest.approx(math.log(n), rel=0.02)


def test_normalise_for_dns():
    x = torch.zeros(10, 10, 10)
    x[2:8, 2:8, 2:8] = torch.linspace(5, 500, 216).reshape(6, 6, 6)
    y = normalise_for_dns(x)
    assert float(y.min()) == 0.0 and float(y.max()) == 1.0
    assert float(y[0, 0, 0]) == 0.0
    assert torch.equal(normalise_for_dns(torch.zeros(3, 3)), torch.zeros(3, 3))


def _volume(path, seed):
    rng = np.random.default_rng(seed)
    g = np.mgrid[:20, :22, :20].astype(float)
    r = np.sqrt(((g[0] - 10) / 8) ** 2 + ((g[1] - 11) / 9) ** 2 + ((g[2] - 10) / 8) ** 2)
    data = (r < 1) * (100 + 50 * (r < 0.5) + rng.normal(0, 5, r.shape))
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2, 2, 1])), path)
    return path


def test_short_training_writes_a_verified_checkpoint(tmp_path):
    images = [_volume(tmp_path / f"sub-0{i}_T1w.nii.gz", i) for i in range(2)]
    settings = DNSTrainSettings(
        steps=10,
        patch=16,
        samples=64,
        channels="4,8",
        features=8,
        validate_every=5,
        val_patches=2,
        val_fraction=0.5,
    )
    out = train_dns(images, out=tmp_path / "dns.pt", settings=settings)
    assert out.is_file() and (tmp_path / "dns.pt.sha256").is_file()
    assert not (tmp_path / "dns.pt.state").exists()
    net = load_dns(out)
    assert net.config.features == 8 and net.config.channels == (4, 8)
    assert load_dns(out) is net  # cached
    meta = torch.load(out, weights_only=True)["metadata"]["training"]
    assert meta["training_data"]["count"] == 2 and len(meta["history"]) == 2
    with torch.no_grad():
        assert net(torch.rand(1, 1, 11, 12, 13)).shape == (1, 8, 11, 12, 13)


def test_missing_shipped_weights_say_how_to_train(monkeypatch, tmp_path):
    monkeypatch.setattr(
        "mmreg.models.default_model_path", lambda method: tmp_path / f"{method}.pt"
    )
    with pytest.raises(InputError, match="mmreg train dns"):
        load_dns(None)
    assert dns_module.FAMILY == "dns"


def test_mmreg_train_dns_on_a_bids_dataset(tmp_path):
    from mmreg.bids_app.train import main_train

    root = tmp_path / "bids"
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.8.0"}')
    _volume(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz", 0)
    _volume(root / "sub-01" / "anat" / "sub-01_T2w.nii.gz", 1)
    _volume(root / "sub-01" / "anat" / "sub-01_dseg.nii.gz", 2)  # not an image to learn
    out = tmp_path / "m" / "dns.pt"
    argv = ["dns", str(root), "--out", str(out), "--no-progress", "--omp-nthreads", "1"]
    argv += ["--steps", "2", "--patch", "16", "--samples", "32", "--channels", "4,8"]
    argv += ["--val-patches", "1", "--validate-every", "1", "--suffix", "T1w", "T2w"]
    assert main_train(argv) == 0
    meta = torch.load(out, weights_only=True)["metadata"]["training"]["training_data"]
    assert meta["count"] == 2
    assert sorted(meta["train"] + meta["val"]) == ["sub-01_T1w.nii.gz", "sub-01_T2w.nii.gz"]


def test_shipped_weights_are_verified_and_run():
    from mmreg.models import MANIFEST, default_model_path

    assert "dns.pt" in MANIFEST.read_text()
    net = load_dns(None)
    assert net is load_dns(default_model_path("dns"))  # one cached copy
    assert net.config.features == 24 and not any(p.requires_grad for p in net.parameters())
    with torch.no_grad():
        out = net(torch.rand(1, 1, 20, 22, 18))
    assert out.shape == (1, 24, 20, 22, 18) and torch.isfinite(out).all()
