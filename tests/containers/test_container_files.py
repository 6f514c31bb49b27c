"""Structural checks of the container recipe (fast; no Docker needed).

containers/Dockerfile, containers/mmreg.def, containers/build.sh and /.dockerignore must
agree with the package (setup.cfg), the torch pin of README.md and the BIDS-App contract
(entry point ``mmreg``). The image itself is exercised by ``test_container.py``
(``pytest -m container``).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import mmreg

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS = ROOT / "containers"


# ---------------------------------------------------------------------------------------------
# Small parsers


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        current = ""
    assert not current, "Dockerfile ends in a continuation line"
    return out


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Instructions split at each FROM (the FROM itself first in its stage)."""
    result: list[list[tuple[str, str]]] = []
    for ins in instructions:
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    """KEY=VALUE pairs of a stage's ENV instructions (no quoting in our file)."""
    env: dict[str, str] = {}
    for word, args in stage:
        if word == "ENV":
            for item in args.split():
                key, _, value = item.partition("=")
                env[key] = value
    return env


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether Docker leaves ``path`` (relative, '/'-separated) out of the build context.

    Docker's rules: the last matching pattern wins, ``!`` re-includes, a pattern matches a
    path or any of its parent folders, ``*`` and ``?`` stop at '/', ``**`` spans folders.
    """

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out += pattern[i : end + 1]
                i = end + 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return re.compile(out + r"\Z")

    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = os.path.normpath(pattern.lstrip("!").strip("/"))
        if any(regex(body).match(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def read_dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def package_dirs() -> dict[str, str]:
    lines = setup_cfg()["options"]["package_dir"].strip().splitlines()
    pairs = (line.split("=") for line in lines if line.strip())
    return {name.strip(): folder.strip() for name, folder in pairs}


def readme_torch_pin() -> str:
    match = re.search(r"torch==([0-9][0-9.]*[0-9])", (ROOT / "README.md").read_text())
    assert match, "README.md lost its torch==X pin"
    return match.group(1)


@pytest.fixture(scope="module")
def dockerfile() -> list[list[tuple[str, str]]]:
    return stages(dockerfile_instructions((CONTAINERS / "Dockerfile").read_text()))


@pytest.fixture(scope="module")
def definition() -> dict[str, str]:
    """Header lines under "header", then each %section's body."""
    sections: dict[str, str] = {"header": ""}
    name = "header"
    for line in (CONTAINERS / "mmreg.def").read_text().splitlines():
        if line.startswith("%"):
            name = line.split()[0][1:]
            sections[name] = ""
        else:
            sections[name] += line + "\n"
    return sections


# ---------------------------------------------------------------------------------------------
# The parsers themselves


def test_dockerignore_matcher_follows_docker_rules() -> None:
    patterns = ["*", "!src/", "**/__pycache__", "!keep/**/*.txt", "docs/*.md"]
    assert dockerignore_excludes(patterns, ".venv/bin/python")
    assert dockerignore_excludes(patterns, "top.txt")
    assert not dockerignore_excludes(patterns, "src/a.py")
    assert dockerignore_excludes(patterns, "src/__pycache__/a.pyc")
    assert dockerignore_excludes(patterns, "src/deep/__pycache__/a.pyc")
    assert not dockerignore_excludes(patterns, "keep/a/b/c.txt")
    assert not dockerignore_excludes(["*.md", "!README.md"], "README.md")
    assert dockerignore_excludes(["docs/*.md"], "docs/a.md")
    assert not dockerignore_excludes(["docs/*.md"], "docs/sub/a.md")


def test_dockerfile_parser_joins_continuations() -> None:
    text = "FROM a AS b\n# c\nRUN x \\\n    # inner comment\n    y\nENV A=1 \\\n    B=2\n"
    parsed = stages(dockerfile_instructions(text))
    assert parsed == [[("FROM", "a AS b"), ("RUN", "x  y"), ("ENV", "A=1  B=2")]]
    assert env_of(parsed[0]) == {"A": "1", "B": "2"}


# ---------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_is_a_bids_app(dockerfile) -> None:
    final = dockerfile[-1]
    entrypoints = [args for word, args in final if word == "ENTRYPOINT"]
    assert entrypoints, "the final stage has no ENTRYPOINT"
    # exec form, so `docker run IMAGE BIDS OUT participant` passes the arguments to mmreg
    assert json.loads(entrypoints[-1]) == ["mmreg"]
    users = [args for word, args in final if word == "USER"]
    assert not users or users[-1] in ("0", "root"), "BIDS-Apps run as root unless -u is given"


def test_dockerfile_environment(dockerfile) -> None:
    env = env_of(dockerfile[-1])
    path = env["PATH"].split(":")
    # the sbatch wrapper first, then the venv, then the system
    assert path[:2] == ["/opt/mmreg/bin", "/opt/mmreg/venv/bin"]
    assert "/usr/bin" in path
    assert env["PYTHONNOUSERSITE"] == "1"  # apptainer binds $HOME: no ~/.local packages
    assert env["NO_ET"] == "1"
    assert env["MPLBACKEND"] == "Agg"
    assert env["HOME"] == "/tmp"  # writable for any --user
    # mmreg's default --omp-nthreads is 1 and the image must not contradict it
    for var in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS"):
        assert env[var] == "1", var


def test_dockerfile_torch_pin_matches_readme(dockerfile) -> None:
    pin = readme_torch_pin()
    args = [a for stage in dockerfile for w, a in stage if w == "ARG" and "TORCH_VERSION" in a]
    assert args and all(a == f"TORCH_VERSION={pin}" for a in args), (args, pin)
    runs = " ".join(a for stage in dockerfile for w, a in stage if w == "RUN")
    assert '"torch==${TORCH_VERSION}"' in runs
    assert f"torch=={pin}" in (ROOT / ".ci" / "run").read_text()


def _stage(dockerfile, name: str) -> list[tuple[str, str]]:
    found = [stage for stage in dockerfile if stage[0][1].endswith(f"AS {name}")]
    assert len(found) == 1, f"one stage named {name!r}"
    return found[0]


def _runs(stage: list[tuple[str, str]]) -> str:
    return " ".join(" ".join(a for w, a in stage if w == "RUN").split())


def test_dockerfile_builds_a_lean_venv_from_the_source(dockerfile) -> None:
    deps, build, final = _stage(dockerfile, "deps"), _stage(dockerfile, "build"), dockerfile[-1]
    # deps: the venv, torch and the requirements, before (and so cached apart from) the source
    runs = _runs(deps)
    assert "python3 -m venv /opt/mmreg/venv" in runs
    assert env_of(deps).get("PIP_NO_CACHE_DIR") == "1" or "--no-cache-dir" in runs
    assert ("COPY", ". /tmp/src") not in deps
    assert ("COPY", "setup.cfg /tmp/setup.cfg") in deps
    assert 'c["options"]["install_requires"]' in runs
    assert 'case "$VARIANT" in cpu|cuda)' in runs  # both variants
    assert 'if [ "$OFFLINE" = 1 ]; then index="--no-index"' in runs  # and the offline mode
    # build: mmreg itself from the copied repository, consistent with the dependencies
    assert build[0][1].split()[0] == "deps"
    assert ("COPY", ". /tmp/src") in build
    runs = _runs(build)
    assert "--no-deps /tmp/src" in runs and "pip check" in runs
    # the final image: the venv, mmreg's installed files and the sbatch wrapper, nothing else
    assert final[0][1].split()[0] == "runtime-base"
    copies = [a for w, a in final if w == "COPY"]
    assert copies == [
        "--from=deps /opt/mmreg/venv /opt/mmreg/venv",
        "--from=build /stage/ /",
        "containers/bin/ /opt/mmreg/bin/",
    ]
    # every COPY source from the context exists in a fresh checkout
    for stage in dockerfile:
        for word, args in stage:
            if word == "COPY" and not args.startswith("--from"):
                source = args.split()[0]
                assert source == "." or (ROOT / source).exists(), source


def test_dockerfile_labels(dockerfile) -> None:
    labels = " ".join(a for w, a in dockerfile[-1] if w == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "source", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    license_ = setup_cfg()["metadata"]["license"]
    assert f'org.opencontainers.image.licenses="{license_}"' in labels


# ---------------------------------------------------------------------------------------------
# .dockerignore: the build context


def _repo_files(folder: Path) -> list[str]:
    return [
        p.relative_to(ROOT).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    ]


def test_dockerignore_leaves_out_the_heavy_and_private_folders() -> None:
    patterns = read_dockerignore()
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "work/cache/x.pklz",
        "out/sub-01/x.nii.gz",
        "demo/bids/dataset_description.json",
        "bench-tp/throughput.csv",
        ".mmreg-ants-1234/x.nii.gz",
        "tests/conftest.py",
        "mmreg.egg-info/PKG-INFO",
        "methods/__pycache__/ants.cpython-311.pyc",
        "build/lib/mmreg/__init__.py",
        "containers/mmreg.sif",
    ):
        assert dockerignore_excludes(patterns, path), path


def test_dockerignore_keeps_everything_pip_install_needs() -> None:
    patterns = read_dockerignore()
    needed = ["setup.cfg", "pyproject.toml", "containers/wheels/torch-2-cp311.whl"]
    needed += _repo_files(CONTAINERS / "bin")  # copied into the image
    # files named by setup.cfg (long_description = file: README.md)
    needed += re.findall(r"file:\s*(\S+)", (ROOT / "setup.cfg").read_text())
    # every file of every package folder, package data and shipped weights included
    for folder in package_dirs().values():
        assert (ROOT / folder).is_dir(), folder
        files = _repo_files(ROOT / folder)
        assert files, folder
        needed += files
    needed += ["mmreg/data/models/keymorph.pt", "mmreg/data/models/SHA256SUMS"]
    left_out = [path for path in needed if dockerignore_excludes(patterns, path)]
    assert not left_out, f"left out of the build context: {left_out[:10]}"


# ---------------------------------------------------------------------------------------------
# Apptainer definition


def test_apptainer_definition(definition) -> None:
    header = dict(line.split(":", 1) for line in definition["header"].splitlines() if ":" in line)
    header = {k.strip(): v.strip() for k, v in header.items()}
    assert header["Bootstrap"] in ("docker-daemon", "docker-archive", "docker", "localimage")
    assert header["From"].startswith("mmreg:") or header["Bootstrap"] == "docker-archive"
    # runscript: the BIDS-App command line goes to mmreg as it is
    runscript = definition["runscript"]
    assert re.search(r'exec\s+(/opt/mmreg/venv/bin/)?mmreg\s+"\$@"', runscript), runscript
    # the environment of the Docker image (a docker-daemon bootstrap keeps it; stated again
    # so that `apptainer exec` and jobs started by the slurm worker see the same)
    env = definition["environment"]
    for item in ("NO_ET=1", "MPLBACKEND=Agg", "/opt/mmreg/venv/bin"):
        assert item in env, item
    assert "apptainer build" in definition["header"] + definition.get("help", "")
    assert "mmreg --version" in definition["test"] or "mmreg --version" in definition.get(
        "test", ""
    )


# ---------------------------------------------------------------------------------------------
# build.sh


def test_build_script_is_valid_bash_and_registry_free() -> None:
    script = CONTAINERS / "build.sh"
    assert os.access(script, os.X_OK), "build.sh must be executable"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "debootstrap --variant=minbase" in text
    assert 'docker_cmd" import' in text
    assert "--network none" in text  # the offline build needs no network at all
    assert "DOCKER_BUILDKIT=0" in text  # the classic builder uses the local base as it is
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-S", "error", str(script)], check=True)
    help_text = subprocess.run(
        ["bash", str(script), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--variant cpu|cuda" in help_text


def test_version_is_what_build_sh_reads() -> None:
    """build.sh reads __version__ with sed; the smoke test then expects `mmreg <version>`."""
    init = (ROOT / "mmreg" / "__init__.py").read_text()
    found = re.findall(r'^__version__ = "(.*)"$', init, flags=re.M)
    assert found == [mmreg.__version__]


# ---------------------------------------------------------------------------------------------
# The sbatch wrapper (containers/bin/sbatch)

BATCH_SCRIPT = """#!/bin/sh
#SBATCH --output=/w/slurm-%j.out
/opt/mmreg/venv/bin/python3 -c 'from pydra.engine.job import load_and_run; \
load_and_run("/w/_job.pklz", rerun=False) '"""


def _fake_sbatch(tmp_path: Path) -> Path:
    """A stand-in for the cluster's sbatch: prints its arguments and the script it got."""
    real = tmp_path / "real"
    real.mkdir(parents=True)
    fake = real / "sbatch"
    fake.write_text('#!/bin/sh\nfor a; do last=$a; done\necho "ARGS $*"\ncat "$last"\n')
    fake.chmod(0o755)
    return real


def _run_wrapper(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    path = f"{CONTAINERS / 'bin'}:{_fake_sbatch(tmp_path)}:/usr/bin:/bin"
    return subprocess.run(
        [str(CONTAINERS / "bin" / "sbatch"), *args],
        env={"PATH": path, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_sbatch_wrapper_runs_jobs_in_the_same_image(tmp_path: Path) -> None:
    script = tmp_path / "batchscript_x.sh"
    script.write_text(BATCH_SCRIPT)
    env = {"APPTAINER_CONTAINER": "/home/u/mmreg.sif"}
    done = _run_wrapper(tmp_path, env, "--job-name=j", "--mem=1G", str(script))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"ARGS --job-name=j --mem=1G {script}\n")  # all passed on
    lines = script.read_text().splitlines()
    assert lines[:2] == BATCH_SCRIPT.splitlines()[:2]  # shebang and #SBATCH kept
    assert lines[-1].startswith(
        "exec \"$MMREG_APPTAINER\" exec ${MMREG_APPTAINER_ARGS:-} '/home/u/mmreg.sif' "
        "/opt/mmreg/venv/bin/python3 -c 'from pydra.engine.job import load_and_run;"
    )
    subprocess.run(["sh", "-n", str(script)], check=True)
    # the job line runs the given apptainer with the image and the original command
    apptainer = tmp_path / "apptainer"
    apptainer.write_text('#!/bin/sh\nprintf "%s|" "$@"\n')
    apptainer.chmod(0o755)
    job = subprocess.run(
        ["sh", str(script)],
        env={
            "PATH": "/usr/bin:/bin",
            "MMREG_APPTAINER": str(apptainer),
            "MMREG_APPTAINER_ARGS": "--nv",
        },
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert job.startswith("exec|--nv|/home/u/mmreg.sif|/opt/mmreg/venv/bin/python3|-c|from pydra")
    # a second submission of the same file does not wrap it twice
    before = script.read_text()
    assert _run_wrapper(tmp_path / "again", env, str(script)).returncode == 0
    assert script.read_text() == before


def test_sbatch_wrapper_passes_through_outside_apptainer(tmp_path: Path) -> None:
    script = tmp_path / "batchscript_x.sh"
    script.write_text(BATCH_SCRIPT)
    done = _run_wrapper(tmp_path, {}, str(script))
    assert done.returncode == 0, done.stderr
    assert script.read_text() == BATCH_SCRIPT


def test_sbatch_wrapper_without_a_real_sbatch(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(CONTAINERS / "bin" / "sbatch"), "x.sh"],
        env={"PATH": f"{CONTAINERS / 'bin'}:{tmp_path}"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 127
    assert "bind the SLURM client in" in done.stderr
