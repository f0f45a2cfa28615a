#!/bin/sh
# llama.cpp's Hugging Face -> GGUF converter, from the llama-cpp-python source distribution whose
# library the environment runs (the wheel holds libllama but not the converter), into
# <environment>/share/kd-edge/llama.cpp: convert_hf_to_gguf.py, its conversion/ package, its gguf-py
# and llama.cpp's LICENSE (MIT). kd-edge's GGUF export runs it from there (or from $KD_EDGE_LLAMA_CPP).
#
#   scripts/install_llama_cpp_tools.sh .venv/bin/python
set -eu
PYTHON=${1:?usage: $0 PYTHON}
VERSION=0.3.36
PREFIX=$("$PYTHON" -c 'import sys; print(sys.prefix)')
DEST="$PREFIX/share/kd-edge/llama.cpp"
if [ -f "$DEST/convert_hf_to_gguf.py" ] && [ "$(cat "$DEST/VERSION" 2>/dev/null)" = "$VERSION" ]; then
    exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK"
TOP="llama_cpp_python-$VERSION/vendor/llama.cpp"
tar -xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK" \
    "$TOP/convert_hf_to_gguf.py" "$TOP/conversion" "$TOP/gguf-py" "$TOP/LICENSE"
rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
mv "$WORK/$TOP" "$DEST"
echo "$VERSION" > "$DEST/VERSION"
