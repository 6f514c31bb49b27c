#!/usr/bin/env bash
# Build the mmreg BIDS-App image without any image registry: a Debian bookworm root
# filesystem made with debootstrap (Debian packages only), imported with `docker import` as
# mmreg-base:bookworm, then `docker build` of containers/Dockerfile on top of it, offline
# (`--network none`) from a wheelhouse this script fills on the host with pip.
#
#   containers/build.sh                          # CPU image: mmreg:<version>-cpu and mmreg:cpu
#   containers/build.sh --variant cuda           # GPU image: PyPI's CUDA torch (several GB)
#   containers/build.sh --save mmreg.tar         # also `docker save` it (copy to a cluster)
#   containers/build.sh --sif mmreg.sif          # also build an Apptainer image (needs apptainer)
#
# Options:
#   --variant cpu|cuda   torch build (default cpu)
#   --tag NAME           image name (default mmreg); tags NAME:<version>-<variant>, NAME:<variant>
#   --rebuild-base       debootstrap again even if mmreg-base:bookworm exists
#   --refresh-wheels     download the wheelhouse again even if it is complete
#   --network            let `docker build` use the network (pip from PyPI inside the build)
#                        instead of the wheelhouse; needs a daemon with working networking
#                        and TLS that Debian's CA bundle trusts
#   --save FILE          docker save the image to FILE (a tar for `apptainer build
#                        mmreg.sif docker-archive://FILE` or `docker load`)
#   --sif FILE           apptainer build FILE from the image (docker-daemon://)
#   --no-smoke-test      skip `mmreg --version` in the finished image
#
# Environment:
#   MMREG_BUILD_DIR   scratch folder for the rootfs and the dockerd log (/var/tmp/mmreg-container)
#   DEBIAN_MIRROR     apt mirror for debootstrap (http://deb.debian.org/debian)
#   DOCKER            docker client command (docker)
#   PYTHON            host Python 3.11 whose pip fills the wheelhouse (python3, or the
#                     repository's .venv when python3 is not 3.11); pip's own configuration
#                     (find-links, indexes, cert) applies, which is how the local CPU torch
#                     wheel is found on machines that have one
#   TORCH_VERSION     default: the `torch==X` pin in README.md
#   TORCH_INDEX_URL   extra index for torch (cpu default: PyTorch's CPU index, used only
#                     when pip's own configuration finds no CPU wheel; cuda: PyPI)
#
# The Docker daemon: when none answers and this runs as root, the script installs Debian's
# docker.io if dockerd is missing, and starts a daemon in the background itself, without
# systemd: first `dockerd` with its defaults (overlay2, bridge network), and if that does not
# come up, `dockerd --storage-driver=vfs --iptables=false --ip6tables=false --bridge=none`
# (no overlay mounts, no iptables: works in most containers; the build needs no network).
# Its log: $MMREG_BUILD_DIR/dockerd.log; stop it with `kill $(cat /var/run/docker.pid)`.
# In a container as root this needs the container to be privileged (mounts, cgroups).
#
# Timings on 2 cores (CPU variant, base and wheelhouse cached): see containers/README.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
work=${MMREG_BUILD_DIR:-/var/tmp/mmreg-container}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
docker_cmd=${DOCKER:-docker}
base_image=mmreg-base:bookworm
suite=bookworm

variant=cpu name=mmreg rebuild_base=0 refresh_wheels=0 network=0 save="" sif="" smoke=1
while (($#)); do
    case $1 in
        --variant) variant=${2:?}; shift ;;
        --variant=*) variant=${1#*=} ;;
        --tag) name=${2:?}; shift ;;
        --tag=*) name=${1#*=} ;;
        --rebuild-base) rebuild_base=1 ;;
        --refresh-wheels) refresh_wheels=1 ;;
        --network) network=1 ;;
        --save) save=${2:?}; shift ;;
        --save=*) save=${1#*=} ;;
        --sif) sif=${2:?}; shift ;;
        --sif=*) sif=${1#*=} ;;
        --no-smoke-test) smoke=0 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
    esac
    shift
done
case $variant in cpu | cuda) ;; *) echo "build.sh: --variant cpu or cuda" >&2; exit 64 ;; esac

say() { printf '[mmreg-build] %s\n' "$*"; }
die() { printf '[mmreg-build] ERROR: %s\n' "$*" >&2; exit 1; }
t0=$SECONDS
elapsed() { printf '%dm%02ds' $(((SECONDS - t0) / 60)) $(((SECONDS - t0) % 60)); }
mkdir -p "$work"

# --- versions ---------------------------------------------------------------------------------
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$repo/mmreg/__init__.py")
[[ -n $version ]] || die "no __version__ in mmreg/__init__.py"
torch_version=${TORCH_VERSION:-$(grep -o 'torch==[0-9][0-9.]*' "$repo/README.md" | head -1 | cut -d= -f3)}
[[ -n $torch_version ]] || die "no torch==X pin in README.md; set TORCH_VERSION"
vcs_ref=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ $vcs_ref != unknown ]] && [[ -n $(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    vcs_ref+="-dirty"
fi
tag_full="$name:$version-$variant"
tag_short="$name:$variant"
say "mmreg $version ($vcs_ref), torch $torch_version, variant $variant -> $tag_full"

# --- 1. a Docker daemon -----------------------------------------------------------------------
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "$@" >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq "$@" >/dev/null; }
}
if ! command -v "$docker_cmd" >/dev/null || { ! "$docker_cmd" info >/dev/null 2>&1 && ! command -v dockerd >/dev/null; }; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        say "installing Debian's docker.io (Docker client and daemon)"
        apt_install docker.io || die "apt-get install docker.io failed"
    fi
fi
command -v "$docker_cmd" >/dev/null || die "no '$docker_cmd' client; Debian: apt-get install docker.io"
daemon_up() { "$docker_cmd" info >/dev/null 2>&1; }
wait_daemon() {
    local end=$((SECONDS + $1))
    until daemon_up; do
        ((SECONDS < end)) || return 1
        kill -0 "$2" 2>/dev/null || return 1
        sleep 1
    done
}
if ! daemon_up; then
    [[ $(id -u) -eq 0 ]] || die "no Docker daemon answers; start one (sudo dockerd &) or join the docker group"
    command -v dockerd >/dev/null || die "no Docker daemon and no dockerd; Debian: apt-get install docker.io"
    log="$work/dockerd.log"
    say "no Docker daemon answers: starting dockerd (log: $log)"
    setsid dockerd >"$log" 2>&1 </dev/null &
    pid=$!
    if ! wait_daemon 60 "$pid"; then
        kill "$pid" 2>/dev/null || true
        sleep 2
        say "dockerd with defaults did not come up (last lines below); trying vfs, no iptables, no bridge"
        tail -n 5 "$log" | sed 's/^/    /' >&2
        rm -f /var/run/docker.pid
        setsid dockerd --storage-driver=vfs --iptables=false --ip6tables=false --bridge=none \
            >"$log" 2>&1 </dev/null &
        pid=$!
        wait_daemon 60 "$pid" || { tail -n 20 "$log" >&2; die "dockerd did not start (see $log)"; }
    fi
    say "dockerd is up (pid $pid, storage driver $("$docker_cmd" info -f '{{.Driver}}'))"
fi

# --- 2. the base image: debootstrap + docker import -------------------------------------------
if ((rebuild_base)) || ! "$docker_cmd" image inspect "$base_image" >/dev/null 2>&1; then
    [[ $(id -u) -eq 0 ]] || die "debootstrap needs root"
    if ! command -v debootstrap >/dev/null; then
        command -v apt-get >/dev/null || die "debootstrap missing"
        say "installing debootstrap"
        apt_install debootstrap || die "apt-get install debootstrap failed"
    fi
    rootfs="$work/rootfs"
    rm -rf "$rootfs"
    say "debootstrap $suite (minbase + python3, python3-venv, ca-certificates) from $mirror"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed (see $work/debootstrap.log)"; }
    # apt sources as in Debian's own images (so `apt-get install` works in derived images).
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # Like debian:*-slim: no docs, man pages or translations, now or in later apt installs.
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
APT::Install-Recommends "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
EOF
    # Security and point-release updates (debootstrap installs the release as it was).
    say "applying $suite-updates and $suite-security in the rootfs"
    cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf" 2>/dev/null || true
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod +x "$rootfs/usr/sbin/policy-rc.d"
    if ! chroot "$rootfs" /bin/sh -c 'export DEBIAN_FRONTEND=noninteractive;
            apt-get update -qq && apt-get -y -qq upgrade' >>"$work/debootstrap.log" 2>&1; then
        say "WARNING: apt-get upgrade in the rootfs failed (see $work/debootstrap.log); continuing"
    fi
    rm -f "$rootfs/usr/sbin/policy-rc.d"
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/* "$rootfs"/tmp/* "$rootfs"/var/tmp/* "$rootfs"/root/.cache
    : >"$rootfs/etc/resolv.conf"
    : >"$rootfs/etc/machine-id"
    echo mmreg >"$rootfs/etc/hostname"
    say "docker import -> $base_image"
    tar --numeric-owner -C "$rootfs" -c . | "$docker_cmd" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --message "debootstrap --variant=minbase $suite ($mirror) + python3 python3-venv" \
        - "$base_image" >/dev/null
    rm -rf "$rootfs"
    say "base image done ($(elapsed))"
else
    say "reusing $base_image (--rebuild-base to make it again)"
fi

# --- 3. the wheelhouse (containers/wheels; git- but not docker-ignored) -----------------------
wheels="$here/wheels"
# Everything but the committed README.md (the Dockerfile copies the folder, so it must exist).
clear_wheels() { rm -f "$wheels"/*.whl "$wheels"/requirements.txt "$wheels"/.complete-*; }
build_args=()
if ((network)); then
    say "--network: pip runs inside the build, from PyPI"
    clear_wheels
    net=(--network host)
    build_args+=(--build-arg OFFLINE=0)
    if [[ -n ${TORCH_INDEX_URL:-} ]]; then
        build_args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
    fi
else
    net=(--network none)
    build_args+=(--build-arg OFFLINE=1)
    stamp="$wheels/.complete-$variant-torch$torch_version-$(cat "$repo/setup.cfg" "$repo/constraints.txt" | sha256sum | cut -c1-16)"
    if ((refresh_wheels)) || [[ ! -e $stamp ]]; then
        py=${PYTHON:-}
        if [[ -z $py ]]; then
            for cand in python3 "$repo/.venv/bin/python"; do
                if command -v "$cand" >/dev/null && "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
                    py=$cand; break
                fi
            done
        fi
        [[ -n $py ]] || die "no host Python 3.11 for the wheelhouse; set PYTHON=..., or use --network"
        "$py" -c 'import sys, platform; assert sys.version_info[:2] == (3, 11) and sys.platform == "linux" and platform.machine() == "x86_64"' \
            || die "$py is not CPython 3.11 on linux x86_64 (the image's platform); use --network"
        clear_wheels
        mkdir -p "$wheels"
        reqs="$wheels/requirements.txt"
        "$py" - "$repo/setup.cfg" >"$reqs" <<'EOF'
import configparser, sys
cfg = configparser.ConfigParser()
cfg.read(sys.argv[1])
print("\n".join(line.strip() for line in cfg["options"]["install_requires"].splitlines() if line.strip()))
EOF
        pipq=("$py" -m pip --disable-pip-version-check)
        if [[ $variant == cpu ]]; then
            # pip's own configuration first (PIP_FIND_LINKS, pip.conf: a local CPU wheel),
            # then PyTorch's CPU index. A torch without "+cpu" would pull the CUDA wheels.
            tdir=$(mktemp -d)
            "${pipq[@]}" download -q --no-deps -d "$tdir" "torch==$torch_version" 2>/dev/null || true
            torch_whl=$(ls "$tdir"/torch-"$torch_version"+cpu-*.whl 2>/dev/null | head -1 || true)
            if [[ -z $torch_whl ]]; then
                rm -f "$tdir"/*
                cpu_index=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
                say "no CPU torch $torch_version through pip's configuration; trying $cpu_index"
                "${pipq[@]}" download -q --no-deps -d "$tdir" --index-url "$cpu_index" "torch==$torch_version" 2>/dev/null || true
                torch_whl=$(ls "$tdir"/torch-"$torch_version"+cpu-*.whl 2>/dev/null | head -1 || true)
            fi
            [[ -n $torch_whl ]] || die "no CPU build of torch $torch_version found (pip config: $("${pipq[@]}" config list 2>/dev/null | tr '\n' ' ')); put torch-$torch_version+cpu-cp311-*.whl in a folder and set PIP_FIND_LINKS to it"
            say "CPU torch: $(basename "$torch_whl")"
            torch_req=("$torch_whl")
        else
            # PyPI's Linux torch is the CUDA build; its nvidia-* wheels come along. pip's local
            # configuration (which may hold a +cpu wheel) is bypassed with --isolated.
            cert=${PIP_CERT:-$("${pipq[@]}" config get global.cert 2>/dev/null || true)}
            pipq=("$py" -m pip --isolated --disable-pip-version-check ${cert:+--cert "$cert"})
            torch_req=("torch==$torch_version")
            if [[ -n ${TORCH_INDEX_URL:-} ]]; then
                torch_req+=(--extra-index-url "$TORCH_INDEX_URL")
            fi
        fi
        say "filling the wheelhouse $wheels (pip wheel: dependencies of mmreg for cp311 linux)"
        if ! "${pipq[@]}" wheel -q -w "$wheels" -c "$repo/constraints.txt" "${torch_req[@]}" -r "$reqs" "setuptools>=69" wheel \
            >"$work/pip-wheel.log" 2>&1; then
            grep -v "is ignored: it is neither a file nor a directory" "$work/pip-wheel.log" | tail -n 20 >&2
            die "pip wheel failed (see $work/pip-wheel.log)"
        fi
        ls "$wheels"/torch-"$torch_version"*.whl >/dev/null 2>&1 || die "torch $torch_version is not in the wheelhouse"
        if [[ $variant == cpu ]] && ls "$wheels"/nvidia_* >/dev/null 2>&1; then
            die "CUDA wheels in the CPU wheelhouse; check pip's configuration"
        fi
        if [[ -n ${tdir:-} ]]; then rm -rf "$tdir"; fi
        rm -f "$wheels"/.complete-*
        touch "$stamp"
        say "wheelhouse: $(ls "$wheels"/*.whl | wc -l) wheels, $(du -sh "$wheels" | cut -f1) ($(elapsed))"
    else
        say "reusing the wheelhouse ($(ls "$wheels"/*.whl | wc -l) wheels; --refresh-wheels to renew)"
    fi
fi

# --- 4. docker build --------------------------------------------------------------------------
say "docker build $tag_full (context: $repo, whitelisted by .dockerignore)"
tb=$SECONDS
# The classic builder: it uses the local base image as it is (no registry look-up).
DOCKER_BUILDKIT=0 "$docker_cmd" build "${net[@]}" \
    -f "$here/Dockerfile" \
    --build-arg "BASE_IMAGE=$base_image" \
    --build-arg "VARIANT=$variant" \
    --build-arg "TORCH_VERSION=$torch_version" \
    --build-arg "MMREG_VERSION=$version" \
    --build-arg "VCS_REF=$vcs_ref" \
    --build-arg "BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    "${build_args[@]}" \
    -t "$tag_full" -t "$tag_short" \
    "$repo"
say "docker build took $((SECONDS - tb)) s"
# Intermediate stages stay as dangling images (the build cache); `docker image prune` drops them.

size=$("$docker_cmd" image inspect -f '{{.Size}}' "$tag_full")
say "image $tag_full: $((size / 1000000)) MB"

if ((smoke)); then
    out=$("$docker_cmd" run --rm --network none "$tag_full" --version)
    [[ $out == "mmreg $version" ]] || die "smoke test: '$out' != 'mmreg $version'"
    say "smoke test: $out"
fi

if [[ -n $save ]]; then
    say "docker save -> $save"
    "$docker_cmd" save -o "$save" "$tag_full"
fi
if [[ -n $sif ]]; then
    apptainer=$(command -v apptainer || command -v singularity || true)
    [[ -n $apptainer ]] || die "--sif: neither apptainer nor singularity is installed"
    say "$apptainer build $sif docker-daemon://$tag_full"
    "$apptainer" build --force "$sif" "docker-daemon://$tag_full"
fi
say "done in $(elapsed): docker run --rm $tag_full --version"
