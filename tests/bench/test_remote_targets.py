"""Benchmarking over SSH against a real sshd on 127.0.0.1, over adb with a stand-in `adb`, and the
bad inputs of remote targets: each a one-line error that leaves the local run intact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kd_edge.bench.profiles import make_target, resolve_target, target_profile
from kd_edge.bench.targets.remote import RemoteTarget
from kd_edge.errors import TargetError
from kd_edge.export import EXPORTERS
from kd_edge.tasks import TASKS
from tests.bench.sshd import keygen, start_sshd

RUN_ARGS = ["--batch", "1", "--seq", "16", "--runs", "8", "--warmup", "2", "--vocab-size", "90", "--threads", "1"]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.process.terminate()
    server.process.wait(timeout=10)


def ssh_profile(sshd, **over):
    data = {"name": "pi-on-loopback", "kind": "ssh", "host": sshd.address, "key_file": str(sshd.client_key),
            "known_hosts": str(sshd.known_hosts), "python": sys.executable, "connect_timeout_s": 5,
            "workdir": str(sshd.folder / "device")}
    data.update(over)
    return target_profile(data)


class CountingTransport:
    """Wraps a real transport and counts uploads (not a stand-in: every call goes through)."""

    def __init__(self, inner):
        self.inner, self.name, self.puts = inner, inner.name, []

    def run(self, argv, timeout, env=None):
        return self.inner.run(argv, timeout, env)

    def put(self, local, remote):
        self.puts.append(Path(local).name)
        self.inner.put(local, remote)

    def close(self):
        self.inner.close()


def test_onnx_and_tflite_over_ssh_match_the_local_schema(sshd, files):
    from kd_edge.bench import RUNNER_PATH
    from kd_edge.bench.targets.local import LocalTarget

    target = make_target(ssh_profile(sshd))
    counting = CountingTransport(target.transport)
    target.transport = counting
    local = LocalTarget()
    for name, runtime in (("student.fp32.onnx", "onnxruntime"), ("student.fp32.tflite", "tflite")):
        args = ["--runtime", runtime, *RUN_ARGS]
        remote_doc = target.run(RUNNER_PATH, files / name, args, threads=1, timeout_s=300)
        local_doc = local.run(RUNNER_PATH, files / name, args, threads=1, timeout_s=300)
        assert remote_doc["target"] == "pi-on-loopback" and remote_doc["timed_runs"] == 8
        assert set(remote_doc) == set(local_doc) and set(remote_doc["latency"]) == set(local_doc["latency"])
        assert set(remote_doc["memory"]) == set(local_doc["memory"])
    assert counting.puts == ["device_runner.py", "student.fp32.onnx", "student.fp32.tflite"]
    # a second benchmark of the same files uploads nothing: the device holds them under their checksum
    target.run(RUNNER_PATH, files / "student.fp32.onnx", ["--runtime", "onnxruntime", *RUN_ARGS], threads=1, timeout_s=300)
    assert counting.puts == ["device_runner.py", "student.fp32.onnx", "student.fp32.tflite"]
    target.close()


def test_onnx_with_external_data_goes_over_ssh_with_its_weights(sshd, tiny_teacher, tmp_path, monkeypatch):
    """A model over ONNX's 2 GB limit (limit lowered here) keeps its weights in <file>.data: both are
    uploaded, under their own names, and the device runs it and counts both in the file size."""
    from kd_edge.bench import RUNNER_PATH
    from kd_edge.export import onnx_files

    monkeypatch.setattr(onnx_files, "PROTO_LIMIT", 10_000)
    task = TASKS.get("sentence_embedding")()
    module = task.export_module(task.load_model(tiny_teacher, eager=True), {"pooling": "mean", "normalize": True})
    path = tmp_path / "big.onnx"
    EXPORTERS.get("onnx")().export(module, path, input_names=("input_ids", "attention_mask"), output_name="e", opset=17)
    assert (tmp_path / "big.onnx.data").is_file()
    target = make_target(ssh_profile(sshd))
    counting = CountingTransport(target.transport)
    target.transport = counting
    doc = target.run(RUNNER_PATH, path, ["--runtime", "onnxruntime", *RUN_ARGS], threads=1, timeout_s=300)
    target.close()
    assert counting.puts[-2:] == ["big.onnx.data", "big.onnx"]
    assert doc["timed_runs"] == 8 and doc["file_size_bytes"] == onnx_files.size(path)


def test_a_causal_lm_pte_goes_over_ssh_with_its_weights_and_measures_pp_and_tg(sshd, tmp_path):
    """The .pte's weights live in <file>.ptd: both travel; the device runner measures prompt processing
    and token generation there as it does here."""
    from kd_edge.bench import RUNNER_PATH
    from kd_edge.bench.targets.local import LocalTarget
    from kd_edge.cli.export_folder import export_model_dir
    from kd_edge.export.config import ArtifactSpec, ExportConfig
    from tests.conftest import sentences, write_tiny_llama

    llama = write_tiny_llama(tmp_path / "llama", layers=1, hidden=32, tie=True)
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(s["text"] + "\n" for s in sentences(10, seed=2)))
    cfg = ExportConfig(artifacts=[ArtifactSpec(format="pte")], tflite_shapes=[(1, 16)], kv_cache_size=40)
    export_model_dir(llama, tmp_path / "files", cfg, texts=texts)
    pte = tmp_path / "files" / "student.fp32.pte"
    target = make_target(ssh_profile(sshd))
    counting = CountingTransport(target.transport)
    target.transport = counting
    vocab = json.loads((llama / "config.json").read_text())["vocab_size"]
    args = ["--runtime", "executorch", "--seq", "8", "--runs", "5", "--warmup", "1", "--threads", "1",
            "--vocab-size", str(vocab), "--lm-pp", "8,32", "--lm-tg", "8@0,8@16", "--lm-ttft", "8"]
    remote = target.run(RUNNER_PATH, pte, args, threads=1, timeout_s=300)
    target.close()
    local = LocalTarget().run(RUNNER_PATH, pte, args, threads=1, timeout_s=300)
    assert [f for f in counting.puts if f != "device_runner.py"] == ["student.fp32.ptd", "student.fp32.pte"]
    assert remote["target"] == "pi-on-loopback" and set(remote["lm"]) == set(local["lm"])
    for doc in (remote, local):
        assert doc["lm"]["pp8"]["tokens_per_s"] > 0 and doc["lm"]["tg8@0"]["tokens_per_s"] > 0
        assert doc["lm"]["tg8@16"]["tokens_per_s"] > 0 and doc["lm"]["ttft_ms"] > 0
        assert doc["lm"]["pp32"] == {"na": "no prefill method holds 32 tokens (longest: 16)"}


def test_bench_command_over_ssh_writes_json(sshd, files, tmp_path):
    profile = tmp_path / "pi.yaml"
    profile.write_text(ssh_profile(sshd).model_dump_json())
    p = subprocess.run([sys.executable, "-m", "kd_edge", "bench", str(files / "student.fp32.onnx"), "--target", str(profile),
                        "--seq", "16", "--runs", "5", "--warmup", "1", "--vocab-size", "90", "--threads", "1,2",
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    written = sorted(f.name for f in (tmp_path / "out").iterdir())
    assert written == ["student.fp32.onnx@pi-on-loopback-t1.json", "student.fp32.onnx@pi-on-loopback-t2.json"]
    assert json.loads((tmp_path / "out" / written[1]).read_text())["threads"] == 2


def test_bench_command_takes_the_key_and_known_hosts_on_the_command_line(sshd, files, tmp_path):
    """No profile file: the address with its port, --key and --known-hosts, as `kd-edge bench --help` says."""
    p = subprocess.run([sys.executable, "-m", "kd_edge", "bench", str(files / "student.fp32.onnx"), "--target",
                        sshd.address, "--key", str(sshd.client_key), "--known-hosts", str(sshd.known_hosts),
                        "--python", sys.executable,
                        "--seq", "16", "--runs", "4", "--rounds", "2", "--warmup", "1", "--vocab-size", "90",
                        "--threads", "1", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "HOME": str(tmp_path)})
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(next((tmp_path / "out").iterdir()).read_text())
    assert doc["target"] == sshd.address and doc["timed_runs"] == 4 and len(doc["rounds"]) == 2


def test_no_key_at_all_says_which_flag_gives_one(sshd, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh keys
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)  # no agent
    profile = ssh_profile(sshd, key_file=None)
    with pytest.raises(TargetError, match=r"no SSH key to log in to .* name one in bench.key_file") as err:
        make_target(profile)
    assert err.value.keys == ("bench.key_file",)  # the command line adds its flag (--key)


def test_a_key_with_a_passphrase_and_a_garbled_known_hosts_are_one_line_each(sshd, tmp_path):
    import subprocess as sp

    locked = tmp_path / "locked_key"
    sp.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(locked)], check=True)
    with pytest.raises(TargetError, match="protected by a passphrase; load it into the SSH agent"):
        make_target(ssh_profile(sshd, key_file=str(locked)))
    garbled = tmp_path / "known_hosts"
    garbled.write_bytes(b"\xff\xfe not a known_hosts file\n[127.0.0.1]:1 ssh-ed25519 !!!!\n")
    with pytest.raises(TargetError, match="known_hosts"):
        make_target(ssh_profile(sshd, known_hosts=str(garbled)))


def test_a_host_without_sftp_is_one_line(tmp_path, files):
    from kd_edge.bench import RUNNER_PATH

    server = start_sshd(tmp_path / "nosftp", sftp=False)
    try:
        target = make_target(ssh_profile(server))
        with pytest.raises(TargetError, match="offers no SFTP.*Subsystem sftp internal-sftp"):
            target.run(RUNNER_PATH, files / "student.fp32.onnx", ["--runtime", "onnxruntime", *RUN_ARGS], threads=1,
                       timeout_s=120)
        target.close()
    finally:
        server.process.terminate()
        server.process.wait(timeout=10)


def test_unreachable_host(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TargetError, match=r"cannot reach root@127.0.0.1:\d+|did not answer"):
        make_target(target_profile({"name": "x", "kind": "ssh", "host": f"root@127.0.0.1:{port}", "connect_timeout_s": 2}))


def test_host_that_does_not_answer_times_out():
    import time

    t0 = time.perf_counter()
    with pytest.raises(TargetError, match="did not answer within 1 s|cannot reach"):
        make_target(target_profile({"name": "x", "kind": "ssh", "host": "root@10.255.255.1", "connect_timeout_s": 1}))
    assert time.perf_counter() - t0 < 10


def test_key_refused(sshd, tmp_path):
    other = keygen(tmp_path / "other_key")
    with pytest.raises(TargetError, match="refused the key .*other_key; install the public key"):
        make_target(ssh_profile(sshd, key_file=str(other)))


def test_changed_host_key_is_refused(sshd, tmp_path):
    impostor = keygen(tmp_path / "impostor")
    key_type, key = (tmp_path / "impostor.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {key_type} {key}\n")
    with pytest.raises(TargetError, match=r"not the one in known_hosts: refusing .* ssh-keygen -R '\[127.0.0.1\]:\d+'"):
        make_target(ssh_profile(sshd, known_hosts=str(known)))


def test_unknown_host_key_is_refused(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(TargetError, match="is not in known_hosts; check its fingerprint, then add it: ssh-keyscan"):
        make_target(ssh_profile(sshd, known_hosts=str(empty)))


def test_no_python_on_the_device(sshd, files):
    from kd_edge.bench import RUNNER_PATH

    target = make_target(ssh_profile(sshd, python="/opt/no/python3"))
    with pytest.raises(TargetError, match="cannot run '/opt/no/python3'.*install Python 3 on the device"):
        target.run(RUNNER_PATH, files / "student.fp32.onnx", ["--runtime", "onnxruntime", *RUN_ARGS], threads=1, timeout_s=60)


def test_no_runtime_on_the_device(sshd, files, tmp_path):
    from kd_edge.bench import RUNNER_PATH

    # a Python on the device that has numpy but no onnxruntime (its import fails as on a bare board)
    blocker = tmp_path / "blocker" / "onnxruntime"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named onnxruntime')\n")
    python = tmp_path / "python-without-onnxruntime"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={blocker.parent} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    target = make_target(ssh_profile(sshd, python=str(python)))
    with pytest.raises(TargetError, match="the onnxruntime runtime is not installed .* -m pip install onnxruntime"):
        target.run(RUNNER_PATH, files / "student.fp32.onnx", ["--runtime", "onnxruntime", *RUN_ARGS], threads=1, timeout_s=60)


def test_file_the_runtime_cannot_load(sshd, tmp_path):
    from kd_edge.bench import RUNNER_PATH

    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07not really onnx")
    target = make_target(ssh_profile(sshd))
    with pytest.raises(TargetError, match=r"broken.onnx on pi-on-loopback failed at load: onnxruntime cannot load .*; the file may"):
        target.run(RUNNER_PATH, bad, ["--runtime", "onnxruntime", *RUN_ARGS], threads=1, timeout_s=60)


def test_no_space_left_on_the_device(sshd, files, tmp_path):
    from kd_edge.bench import RUNNER_PATH

    tiny = tmp_path / "tiny-disk"
    tiny.mkdir()
    # room for the runner (41 KB), not for the file
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(tiny)], check=True)
    try:
        target = make_target(ssh_profile(sshd, workdir=str(tiny)))
        with pytest.raises(TargetError, match="no space left on pi-on-loopback: student.fp32.onnx needs"):
            target.run(RUNNER_PATH, files / "student.fp32.onnx", ["--runtime", "onnxruntime", *RUN_ARGS], threads=1,
                       timeout_s=60)
    finally:
        subprocess.run(["umount", str(tiny)], check=True)


def test_remote_failure_leaves_the_run_intact(sshd, tmp_path, tiny_teacher, tiny_data):
    """A run benchmarked on an unreachable device: the bench stage fails with one line, every
    earlier output stays as it was, and the run continues once the target is fixed."""
    import yaml

    from tests.conftest import tiny_recipe_dict

    recipe = tmp_path / "r.yaml"
    data = tiny_recipe_dict(tiny_teacher, tiny_data, export={"artifacts": [{"format": "onnx", "precision": "fp32"}]},
                            gate={"budgets": []})
    recipe.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    kd = [sys.executable, "-m", "kd_edge"]
    assert subprocess.run([*kd, "run", str(recipe), "--out", str(out), "-q"], capture_output=True).returncode == 0
    before = {f: f.stat().st_mtime_ns for f in out.rglob("*") if f.is_file() and f.parent.name != "bench"
              and f.name not in (".lock", "manifest.json", "recipe.resolved.yaml")}
    p = subprocess.run([*kd, "bench", str(out), "--target", "root@127.0.0.1:1"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error: cannot reach root@127.0.0.1:1") and "Traceback" not in p.stderr
    after = {f: f.stat().st_mtime_ns for f in before}
    assert after == before
    assert (out / "bench" / "teacher@local.json").is_file()  # the old local results are still there


def test_adb_path_with_a_stand_in_adb(files, tmp_path):
    """No phone can exist here: `adb` is a STAND-IN script that plays a connected device, keeping
    its files in a folder and running shell commands on this machine. Everything kd-edge does
    (push, shell with quoted arguments, parsing the runner's JSON) is the real code."""
    from kd_edge.bench import RUNNER_PATH

    device = tmp_path / "phone"
    device.mkdir()
    stand_in = tmp_path / "bin" / "adb"
    stand_in.parent.mkdir()
    stand_in.write_text(f"""#!{sys.executable}
# STAND-IN for Android's adb (test only): one device 'emulator-5554' whose storage is {device}.
import os, shutil, subprocess, sys
args = sys.argv[1:]
if args[:1] == ["-s"]:
    if args[1] != "emulator-5554":
        print("error: device '" + args[1] + "' not found", file=sys.stderr); sys.exit(1)
    args = args[2:]
root = {str(device)!r}
def here(p): return root + p
if args[0] == "get-state":
    print("device"); sys.exit(0)
if args[0] == "push":
    os.makedirs(os.path.dirname(here(args[2])), exist_ok=True); shutil.copyfile(args[1], here(args[2]))
    print(args[1] + ": 1 file pushed"); sys.exit(0)
if args[0] == "shell":
    command = args[1].replace("/data/local/tmp", root + "/data/local/tmp")
    sys.exit(subprocess.run(["sh", "-c", command]).returncode)
print("unsupported", args, file=sys.stderr); sys.exit(1)
""")
    stand_in.chmod(0o755)
    profile = resolve_target("adb:emulator-5554").model_copy(update={"adb": str(stand_in), "python": sys.executable})
    target = make_target(profile)
    assert isinstance(target, RemoteTarget) and target.name == "android-arm64"
    doc = target.run(RUNNER_PATH, files / "student.fp32.tflite", ["--runtime", "tflite", *RUN_ARGS], threads=1, timeout_s=300)
    assert doc["target"] == "android-arm64" and doc["timed_runs"] == 8 and doc["runtime"] == "tflite"
    assert any(p.name.endswith("student.fp32.tflite") for p in (device / "data/local/tmp/kd-edge-bench/cache").iterdir())
    with pytest.raises(TargetError, match="no Android device emulator-9999 ready"):
        make_target(profile.model_copy(update={"serial": "emulator-9999"}))
    with pytest.raises(TargetError, match="'no-such-adb' not found; install Android platform tools"):
        make_target(profile.model_copy(update={"adb": "no-such-adb"}))


def test_target_names_resolve():
    assert resolve_target("local").kind == "local"
    assert resolve_target("rpi5", host="pi@raspberrypi.local").host == "pi@raspberrypi.local"
    assert resolve_target("pi@10.0.0.2:2222").kind == "ssh"
    from kd_edge.errors import ConfigError

    with pytest.raises(ConfigError, match="target rpi4 is reached over SSH; give the address in bench.host"):
        resolve_target("rpi4")
    with pytest.raises(ConfigError, match="unknown target 'rpi6'; did you mean 'rpi5'"):
        resolve_target("rpi6")


def test_native_benchmark_model_output_becomes_the_same_json(files, tmp_path):
    """The phone has TFLite's benchmark_model and no Python: kd-edge pushes the file, runs the binary
    and parses its output. The binary here is a STAND-IN that prints benchmark_model's real output
    format (adb is the stand-in of the previous test)."""
    from kd_edge.bench import RUNNER_PATH
    from kd_edge.bench.native import parse_benchmark_model

    device = tmp_path / "phone"
    (device / "data/local/tmp").mkdir(parents=True)
    fake_tool = device / "data/local/tmp/benchmark_model"
    fake_tool.write_text("#!/bin/sh\n# STAND-IN for TFLite's benchmark_model: prints its output format\n"
                         "echo 'INFO: Initialized session in 17.3ms.'\n"
                         "echo 'INFO: count=12 first=23165 curr=13238 min=13107 max=23165 avg=13682.6 std=1613'\n"
                         "echo \"INFO: args $*\"\n"
                         "echo 'INFO: count=50 first=13304 curr=13329 min=13154 max=14067 avg=13359.4 std=164 p5=13160 median=13301 p95=13900'\n"
                         "echo 'INFO: Inference timings in us: Init: 17318, First inference: 23165, Warmup (avg): 13682.6, Inference (avg): 13359.4'\n"
                         "echo 'INFO: Peak memory footprint (MB): init=3.89 overall=9.76'\n")
    fake_tool.chmod(0o755)
    stand_in = tmp_path / "adb"
    stand_in.write_text(f"""#!{sys.executable}
# STAND-IN for adb (test only): device storage is {device}
import os, shutil, subprocess, sys
a = sys.argv[1:]
if a[:1] == ["-s"]: a = a[2:]
root = {str(device)!r}
if a[0] == "get-state": print("device"); sys.exit(0)
if a[0] == "push":
    os.makedirs(os.path.dirname(root + a[2]), exist_ok=True); shutil.copyfile(a[1], root + a[2]); sys.exit(0)
if a[0] == "shell": sys.exit(subprocess.run(["sh", "-c", a[1].replace("/data/local/tmp", root + "/data/local/tmp")]).returncode)
sys.exit(1)
""")
    stand_in.chmod(0o755)
    profile = resolve_target("adb").model_copy(update={"adb": str(stand_in), "python": "/nonexistent/python",
                                                       "tflite_benchmark_model": "/data/local/tmp/benchmark_model"})
    target = make_target(profile)
    doc = target.run(RUNNER_PATH, files / "student.fp32.tflite", ["--runtime", "tflite", *RUN_ARGS], threads=1, timeout_s=60)
    assert doc["native"] and doc["timed_runs"] == 50 and doc["latency"]["p50_ms"] == pytest.approx(13.301)
    assert doc["latency"]["mean_ms"] == pytest.approx(13.3594) and doc["peak_rss_mb"] == pytest.approx(9.76)
    assert doc["load_ms"] == pytest.approx(17.318) and doc["target"] == "android-arm64"
    assert parse_benchmark_model("ERROR: could not open model")["error"].startswith("benchmark_model reported no timings")
