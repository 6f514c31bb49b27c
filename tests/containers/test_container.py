"""The Docker image end to end (``pytest -m container tests/containers``; minutes).

Builds the CPU image with ``containers/build.sh`` (a no-op rebuild when nothing changed: the
layers are cached) unless ``MMREG_IMAGE`` names an image to test as it is, then runs it the
way users do: ``--version``, the demo as a non-root user without network, and the BIDS-App
form on a read-only BIDS folder. Skipped when no Docker client is installed; build.sh starts
a daemon itself when it runs as root and none answers.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

import mmreg

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[2]
DOCKER = os.environ.get("DOCKER", "docker")


def docker(*args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        pytest.fail(
            f"docker {' '.join(args)} exited {done.returncode}\n"
            f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
        )
    return done


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which(DOCKER) is None:
        pytest.skip(f"no '{DOCKER}' client (Debian: apt-get install docker.io)")
    given = os.environ.get("MMREG_IMAGE")
    if given:
        if docker("image", "inspect", given, check=False).returncode != 0:
            pytest.fail(f"MMREG_IMAGE={given} does not exist")
        return given
    if docker("info", check=False, timeout=60).returncode != 0 and os.getuid() != 0:
        pytest.skip("no Docker daemon answers (containers/build.sh starts one as root)")
    build = subprocess.run(
        ["bash", str(ROOT / "containers" / "build.sh"), "--variant", "cpu"],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if build.returncode != 0:
        pytest.fail(f"containers/build.sh failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}")
    return f"mmreg:{mmreg.__version__}-cpu"


def _user() -> str:
    """Run as the caller, or as an arbitrary non-root user when the tests run as root."""
    uid = os.getuid()
    return f"{uid}:{os.getgid()}" if uid != 0 else "12345:12345"


def test_version_and_metadata(image: str) -> None:
    done = docker("run", "--rm", "--network", "none", image, "--version")
    assert done.stdout.strip() == f"mmreg {mmreg.__version__}"
    config = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    assert config["Entrypoint"] == ["mmreg"]
    assert config["Labels"]["org.opencontainers.image.version"] == mmreg.__version__
    assert config["Labels"]["io.github.mmreg.variant"] == "cpu"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["NO_ET"] == "1" and env["MPLBACKEND"] == "Agg" and env["HOME"] == "/tmp"


def test_cpu_torch_and_shipped_data(image: str) -> None:
    """The CPU torch build, and the package data (template, weights) as in the repository."""
    code = (
        "import hashlib, json, pathlib, torch, mmreg; "
        "d = pathlib.Path(mmreg.__file__).parent / 'data'; "
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, "
        "'files': {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() "
        "for p in sorted(d.rglob('*')) if p.is_file()}}))"
    )
    out = docker("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", code)
    info = json.loads(out.stdout)
    assert info["cuda"] is None and info["torch"].endswith("+cpu"), info["torch"]
    # what setup.cfg's package_data ships from mmreg/data, with the repository's bytes
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    patterns = [p.strip() for p in cfg["options.package_data"]["mmreg"].split(",")]
    package = ROOT / "mmreg"
    shipped = {
        str(p.relative_to(package / "data")): hashlib.sha256(p.read_bytes()).hexdigest()
        for pattern in patterns
        if pattern.startswith("data/")
        for p in package.glob(pattern)
        if p.is_file()
    }
    assert shipped, "no package data found in the repository"
    assert info["files"] == shipped


@pytest.fixture(scope="module")
def demo(image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("container-demo")
    out.chmod(0o777)  # writable for the container's non-root user
    docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--user",
        _user(),
        "-v",
        f"{out}:/out",
        image,
        "demo",
        "--out",
        "/out/demo",
        "--subjects",
        "1",
        "--methods",
        "identity,ants-affine",
        "--nprocs",
        "2",
        timeout=1800,
    )
    return out / "demo"


def test_demo_in_the_container(demo: Path) -> None:
    group = demo / "bids" / "derivatives" / "mmreg" / "group"
    df = pd.read_csv(group / "evaluation.csv", dtype={"subject": str})
    assert set(df["status"]) == {"ok"}
    assert set(df["method"]) == {"identity", "ants-affine"}
    ants = df[df["method"] == "ants-affine"]
    assert len(ants) == 2  # one subject x (T2w, PDw)
    assert (ants["dice_mean"] > ants["initial_dice_mean"] + 0.2).all()
    assert (group / "report.html").stat().st_size > 0
    uid = int(_user().split(":")[0])
    assert (group / "report.html").stat().st_uid == uid


def test_bids_app_form_on_a_read_only_dataset(image: str, demo: Path, tmp_path: Path) -> None:
    """docker run IMAGE /data /out participant ...: BIDS folder mounted read-only."""
    tmp_path.chmod(0o777)
    common = [
        "run",
        "--rm",
        "--network",
        "none",
        "--user",
        _user(),
        "-v",
        f"{demo / 'bids'}:/data:ro",
        "-v",
        f"{tmp_path}:/out",
    ]
    docker(
        *common,
        image,
        "/data",
        "/out/mmreg",
        "participant",
        "--participant-label",
        "01",
        "--methods",
        "identity",
        "--work-dir",
        "/out/work",
    )
    docker(*common, image, "/data", "/out/mmreg", "group", "--work-dir", "/out/work")
    out = tmp_path / "mmreg"
    assert (out / "dataset_description.json").is_file()
    assert list((out / "sub-01" / "anat").glob("sub-01_space-T1w_desc-identity_*.nii.gz"))
    assert (out / "group" / "evaluation.csv").is_file()
    # usage errors keep the contract's exit codes inside the container
    missing = docker(*common, image, "/nowhere", "/out/x", "participant", check=False)
    assert missing.returncode == 66, missing.stderr
