#!/usr/bin/env bash
# Build (once) an arm64 Debian root file system holding what a Raspberry Pi needs to run the kd-edge
# device runner: python3, numpy, onnxruntime and ai-edge-litert (aarch64 wheels fetched on this host).
# Used by the `rpi5-emulated` target (qemu-user through binfmt, entered with chroot). Needs root.
#
#   scripts/build_pi_rootfs.sh [ROOT]        (default .cache/pi-rootfs)
set -euo pipefail
ROOT=${1:-.cache/pi-rootfs}
PY=${PYTHON:-.venv/bin/python}
if [ -f "$ROOT/.kd-edge-ready" ]; then echo "emulated Pi root file system ready: $ROOT"; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "building the emulated Pi needs root (mmdebstrap, binfmt, chroot)"; exit 1; }

need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
[ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
command -v update-binfmts >/dev/null || need+=(binfmt-support)
if [ ${#need[@]} -gt 0 ]; then
  apt-get install -y -q "${need[@]}" >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q "${need[@]}" >/dev/null; }
fi
# binfmt lets the kernel run aarch64 programs through qemu (what `chroot ROOT python3` relies on)
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64 || true

TMP="$ROOT.tmp"
mkdir -p "$(dirname "$ROOT")"
if [ ! -x "$TMP/usr/bin/python3" ] || [ ! -f "$TMP/.debootstrapped" ]; then
  rm -rf "$TMP"
  echo "building an arm64 Debian root file system in $ROOT (a few minutes, about 300 MB)"
  mmdebstrap --quiet --arch=arm64 --variant=minbase --include=python3,ca-certificates bookworm "$TMP"
  touch "$TMP/.debootstrapped"
fi

echo "fetching aarch64 wheels: numpy, onnxruntime, ai-edge-litert"
WHEELS="$(dirname "$ROOT")/pi-wheels"
mkdir -p "$WHEELS"
# pip matches --platform tags exactly: list the manylinux levels these wheels are published for
"$PY" -m pip download --quiet --only-binary=:all: --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
  --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64 \
  --python-version 3.11 --implementation cp -d "$WHEELS" numpy==2.4.6 onnxruntime==1.32.0 ai-edge-litert==2.3.0
# a wheel is a zip of its site-packages files: unpack each into the guest's dist-packages
SITE="$TMP/usr/local/lib/python3.11/dist-packages"
mkdir -p "$SITE"
for w in "$WHEELS"/*.whl; do "$PY" -m zipfile -e "$w" "$SITE"; done

# qemu 7.2 shows the guest this host's x86 /proc/cpuinfo, on which onnxruntime and LiteRT abort;
# the target binds this ARM one over it (see kd_edge/bench/targets/qemu.py)
mkdir -p "$TMP/.kd-edge"
cat > "$TMP/.kd-edge/cpuinfo" <<'CPU'
processor	: 0
BogoMIPS	: 108.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x4
CPU part	: 0xd0b
CPU revision	: 1

CPU
touch "$TMP/.kd-edge-ready"
rm -rf "$ROOT"
mv "$TMP" "$ROOT"
echo "emulated Pi root file system ready: $ROOT"
