"""A teacher behind an OpenAI-compatible endpoint (``teacher.server``): vLLM, TGI, llama.cpp's server or
a hosted API, which is how a teacher too large for this machine, or one only reachable as a service, is
distilled from.

Requests go to ``<url>/completions`` (the legacy completions API every such server speaks), ``concurrency``
at a time, at most ``rate_limit`` a second, each with a ``timeout``. A request that fails in a way that may
pass (HTTP 429 and 5xx, a timeout, a dropped connection, a body cut short) is tried again with exponential
backoff (a server's ``Retry-After`` is honoured); one that cannot pass (HTTP 4xx, an unknown model, a body
that is not a completion) stops the stage with one line naming the request and the fix.

Every answer is written to the store as it arrives, under the SHA-256 of its request (the URL, the served
model and the body; never the key), one JSON file each: an interrupted run keeps what it got, and a
repeated or resumed run sends only what it has not got yet.

Only the standard library is used (``urllib``, threads): a client of one POST per prompt needs no more.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from kd_edge.errors import TargetError

if TYPE_CHECKING:
    from kd_edge.distill.config import ServerConfig

BACKOFF = 0.5  # seconds before the first retry; doubled after each
MAX_WAIT = 30.0  # the longest a retry waits, Retry-After included


class ServedTeacherError(TargetError):
    """The served teacher cannot give what the run needs; the message says why and what to do."""


class _Retry(Exception):
    """A failure that may pass: try the request again after ``wait`` seconds (None: the backoff)."""

    def __init__(self, why: str, wait: float | None = None):
        super().__init__(why)
        self.wait = wait


@dataclass
class Stats:
    """What talking to the server took."""

    sent: int = 0  # requests answered by the server in this run
    stored: int = 0  # answers read from the store (sent by an earlier run)
    retries: int = 0
    seconds: float = 0.0
    completion_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "stored": self.stored, "retries": self.retries,
                "seconds": round(self.seconds, 2), "completion_tokens": self.completion_tokens}


class _RateLimit:
    """At most ``per_second`` request starts a second, across threads."""

    def __init__(self, per_second: float | None):
        self.interval = 1.0 / per_second if per_second else 0.0
        self.next = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        if start > now:
            time.sleep(start - now)


class ServedTeacher:
    """The client of one ``teacher.server``; answers are kept in ``store``."""

    def __init__(self, cfg: "ServerConfig", store: Path, *, sleep: Callable[[float], None] = time.sleep):
        self.cfg, self.store, self.sleep = cfg, store, sleep
        self.stats = Stats()
        self.key = None
        if cfg.api_key_env:
            self.key = os.environ.get(cfg.api_key_env)
            if not self.key:
                raise ServedTeacherError(f"teacher.server.api_key_env names {cfg.api_key_env}, which is not set; "
                                         f"export {cfg.api_key_env}=<your key> (or set api_key_env: null for a server "
                                         "without keys)")
        self.limit = _RateLimit(cfg.rate_limit)

    # -- one request ------------------------------------------------------------------------------------
    def _post(self, path: str, body: dict | None) -> dict:
        """One HTTP exchange; raises _Retry for what may pass, ServedTeacherError for what cannot."""
        url = f"{self.cfg.url}/{path}"
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, headers=headers, method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            detail = _detail(e)
            if e.code == 429 or e.code >= 500:
                retry_after = e.headers.get("Retry-After") if e.headers else None
                wait = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
                raise _Retry(f"HTTP {e.code}{detail}", wait) from e
            if e.code in (401, 403):
                fix = (f"check the key in {self.cfg.api_key_env}" if self.cfg.api_key_env else
                       "the server wants a key: set teacher.server.api_key_env to the variable that holds it")
                raise ServedTeacherError(f"the teacher server at {self.cfg.url} refused the request (HTTP {e.code}"
                                         f"{detail}); {fix}") from e
            raise ServedTeacherError(f"the teacher server at {url} answered HTTP {e.code}{detail}; check "
                                     "teacher.server.url and teacher.server.model") from e
        except (TimeoutError, ConnectionError, urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                raise _Retry(f"no answer within {self.cfg.timeout:g} s") from e
            raise _Retry(f"{type(reason).__name__}: {reason}") from e
        try:
            return json.loads(raw)
        except ValueError as e:
            raise _Retry(f"a body that is not JSON ({raw[:80]!r})") from e

    def _with_retries(self, path: str, body: dict | None, what: str) -> dict:
        delay = BACKOFF
        for attempt in range(self.cfg.retries + 1):
            self.limit.wait()
            try:
                return self._post(path, body)
            except _Retry as e:
                if attempt == self.cfg.retries:
                    raise ServedTeacherError(
                        f"the teacher server at {self.cfg.url} failed {what} {attempt + 1} times (last: {e}); "
                        + ("start it, or fix teacher.server.url" if "Connection" in str(e) or "Errno" in str(e)
                           else "raise teacher.server.retries or timeout, or lower concurrency and rate_limit")
                        + "; the answers already stored are kept for the next run") from None
                with self.stats.lock:
                    self.stats.retries += 1
                self.sleep(min(MAX_WAIT, e.wait if e.wait is not None else delay))
                delay *= 2
        raise AssertionError("unreachable")

    # -- the store --------------------------------------------------------------------------------------
    def request_key(self, body: dict) -> str:
        return hashlib.sha256(json.dumps({"url": self.cfg.url, "model": self.cfg.model, "body": body},
                                         sort_keys=True).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.store / key[:2] / f"{key}.json"

    def _stored(self, key: str) -> dict | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:  # a file cut short by a crash: ask again
            return None

    def _keep(self, key: str, body: dict, answer: dict) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f"{path.name}.{threading.get_ident()}.part")
        part.write_text(json.dumps({"request": body, "answer": answer}))
        part.replace(path)

    # -- what the stages call ---------------------------------------------------------------------------
    def check_model(self) -> None:
        """The server answers and serves ``model``: one line otherwise, before any prompt is sent."""
        listing = self._with_retries("models", None, "to list its models")
        names = [m.get("id") for m in listing.get("data", []) if isinstance(m, dict)] if isinstance(listing, dict) else []
        if names and self.cfg.model not in names:
            raise ServedTeacherError(f"the teacher server at {self.cfg.url} does not serve {self.cfg.model!r} (it serves "
                                     f"{', '.join(map(repr, names[:5]))}); fix teacher.server.model")

    def complete(self, prompts: list[str], *, max_tokens: int, temperature: float, seed: int,
                 progress: bool = False) -> list[str]:
        """The served teacher's continuation of each prompt (greedy at temperature 0), from the store where
        an earlier run already asked."""
        bodies = [{"model": self.cfg.model, "prompt": p, "max_tokens": max_tokens, "temperature": temperature,
                   "seed": seed, "n": 1, "stream": False} for p in prompts]
        return self._ask(bodies, lambda answer: _completion_text(answer, self.cfg), "prompt", progress)

    def score(self, texts: list[str], *, top_k: int, progress: bool = False) -> list[dict]:
        """The served teacher's top-``top_k`` log-probabilities at every position of each text (the
        completions API with ``echo`` and ``logprobs``, one token generated): each answer's
        ``logprobs`` (``tokens``, ``token_logprobs``, ``top_logprobs``), from the store where an earlier
        run already asked. A server that returns none is one line."""
        bodies = [{"model": self.cfg.model, "prompt": t, "max_tokens": 1, "temperature": 0.0, "echo": True,
                   "logprobs": top_k, "n": 1, "stream": False} for t in texts]
        return self._ask(bodies, lambda answer: _prompt_logprobs(answer, self.cfg), "text", progress)

    def next_token_logprobs(self, prompts: list[str], *, top_k: int) -> list[dict]:
        """The top-``top_k`` log-probabilities of the token after each prompt (one generated token)."""
        bodies = [{"model": self.cfg.model, "prompt": p, "max_tokens": 1, "temperature": 0.0, "logprobs": top_k,
                   "n": 1, "stream": False} for p in prompts]

        def parse(answer: Any) -> dict:
            entries = _prompt_logprobs(answer, self.cfg)["top_logprobs"]
            if not entries or not isinstance(entries[-1], dict):
                raise ServedTeacherError(f"the teacher server at {self.cfg.url} returns no log-probabilities of the "
                                         "token it generates; serve the teacher where it does (vLLM, llama.cpp's "
                                         "server)")
            return entries[-1]

        return self._ask(bodies, parse, "probe", False)

    def _ask(self, bodies: list[dict], parse: Callable[[Any], Any], unit: str, progress: bool) -> list:
        """``parse`` of each request's answer: stored ones read, the others sent concurrently and
        stored once ``parse`` accepts them (an answer it refuses is not kept, and stops the stage)."""
        keys = [self.request_key(b) for b in bodies]
        results: list[Any] = [None] * len(bodies)
        todo = []
        for i, key in enumerate(keys):
            stored = self._stored(key)
            if stored is not None:
                results[i] = parse(stored["answer"])
                self.stats.stored += 1
            else:
                todo.append(i)
        if not todo:
            return results
        self.check_model()
        from kd_edge.progress import Progress

        bar = Progress(total=len(todo), desc="served teacher", unit=unit, enabled=progress)
        t0 = time.perf_counter()

        def one(i: int) -> None:
            answer = self._with_retries("completions", bodies[i], f"{unit} {i}")
            results[i] = parse(answer)
            self._keep(keys[i], bodies[i], answer)
            with self.stats.lock:
                self.stats.sent += 1
                self.stats.completion_tokens += int((answer.get("usage") or {}).get("completion_tokens") or 0)
                bar.update(1)

        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            futures = [pool.submit(one, i) for i in todo]
            wait(futures, return_when=FIRST_EXCEPTION)
            for f in futures:
                f.cancel()
            for f in futures:
                if f.done() and not f.cancelled() and f.exception() is not None:
                    bar.close()
                    raise f.exception()
        bar.close()
        self.stats.seconds += time.perf_counter() - t0
        return results

    def provenance(self) -> dict[str, Any]:
        """What the report records of where the teacher's outputs came from."""
        return {"endpoint": self.cfg.url, "served_model": self.cfg.model,
                "date": time.strftime("%Y-%m-%d", time.gmtime()), **self.stats.as_dict()}


def _detail(e: "urllib.error.HTTPError") -> str:
    try:
        body = e.read()[:200].decode(errors="replace").strip()
    except Exception:  # noqa: BLE001 - a body we cannot read adds nothing
        body = ""
    return f": {body}" if body else ""


def _prompt_logprobs(answer: Any, cfg: "ServerConfig") -> dict:
    """The ``logprobs`` of a completions answer that echoes its prompt, or one line saying what is missing."""
    _completion_text(answer, cfg)
    logprobs = answer["choices"][0].get("logprobs")
    if not isinstance(logprobs, dict) or not isinstance(logprobs.get("top_logprobs"), list) or \
            not isinstance(logprobs.get("tokens"), list):
        raise ServedTeacherError(f"the teacher server at {cfg.url} returns no log-probabilities of the prompt's tokens "
                                 "(echo with logprobs), which token-level KD needs; serve the teacher where it does "
                                 "(llama.cpp's server with --logits_all true, vLLM), or learn from its text instead "
                                 "(distill.generate)")
    return logprobs


def _completion_text(answer: Any, cfg: "ServerConfig") -> str:
    """The text of a completions answer, or one line saying what the server sent instead."""
    try:
        text = answer["choices"][0]["text"]
    except (KeyError, IndexError, TypeError):
        text = None
    if not isinstance(text, str):
        raise ServedTeacherError(f"the teacher server at {cfg.url} answered something that is not an OpenAI completion "
                                 f"({json.dumps(answer)[:120]}); is teacher.server.url the API's base (ending in /v1)?")
    return text


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def llama_server(gguf: Path, *, alias: str, threads: int = 1, n_ctx: int = 512, log: Path | None = None,
                 start_timeout: float = 60.0, logits_all: bool = False):
    """llama.cpp's OpenAI-compatible server (``python -m llama_cpp.server``, llama-cpp-python's server
    extra) serving ``gguf`` as ``alias`` on 127.0.0.1; yields its base URL. ``logits_all``: it keeps
    every position's logits, so that it can return a prompt's log-probabilities (token-level KD). How
    the tests and ``benchmarks/served_teacher.py`` serve a teacher."""
    import subprocess
    import sys

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--model_alias", alias, "--n_threads", str(threads), "--n_ctx",
                             str(n_ctx), "--logits_all", str(logits_all).lower()], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=1).read()
                break
            except OSError:
                tail = Path(log).read_text(errors="replace")[-300:] if log else ""
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise ServedTeacherError(f"llama.cpp's server did not start on {url} (exit {proc.poll()}): "
                                             f"{tail.strip().splitlines()[-1] if tail.strip() else 'no output'}; "
                                             "install it with pip install 'kd-edge[served]'") from None
                time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log:
            out.close()


# -- a served teacher's log-probabilities as the cache's sparse targets -------------------------------------
PAD_LOGPROB = -30000.0  # a top-k slot the server filled with nothing: no mass (finite in fp16)
NEXT_TOKEN_ENTRIES = 0.3  # share of positions whose entry holds the text's next token: past it, entries are "next"


def token_texts(tokenizer) -> dict[str, int]:
    """Each token's text as a server writes it in ``top_logprobs`` (the token decoded alone) -> its id.
    A text two ids share (the bytes of a split character, tokens that decode to nothing) maps to none:
    the server's answer cannot say which id it meant."""
    seen: dict[str, int] = {}
    shared: set[str] = set()
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        if text in seen:
            shared.add(text)
        else:
            seen[text] = i
    for text in shared:
        del seen[text]
    return seen


def _aligned(tokens: list, ids, decoded: list[str]) -> bool:
    """Whether the server read the text as these ids: its tokens' texts are ours, where ours are whole."""
    if len(tokens) < len(ids):
        return False
    return all(theirs == ours for theirs, ours in zip(tokens, decoded) if ours and "\ufffd" not in ours)


def entries_follow_their_token(client: "ServedTeacher", tokenizer, answers: list[dict], seqs: list,
                                top_k: int) -> tuple[bool, dict]:
    """Which way a server pairs its ``top_logprobs`` with the prompt's tokens: the OpenAI way (entry i is
    the distribution of token i given the tokens before it) or after their token (entry i is the
    distribution of the token after token i: llama-cpp-python 0.3.36 for a model without a BOS token,
    whose first entry is then lost). Decided by a probe: the distribution the server gives for the token
    after the first three tokens of a text, asked as a completion (which every server pairs the same
    way), against the echo's entries 2 and 3. Returns (after, the probe's distances)."""
    m = 3
    at = next((i for i, seq in enumerate(seqs) if len(seq) > m + 1), None)
    if at is None:
        return False, {"probe": "no text of more than 4 tokens; assumed the OpenAI way"}
    probe = client.next_token_logprobs([tokenizer.decode(list(map(int, seqs[at][:m])))], top_k=top_k)[0]
    entries = answers[at]["top_logprobs"]

    def distance(entry: dict | None) -> float:
        shared = set(entry or {}) & set(probe)
        return sum(abs(entry[k] - probe[k]) for k in shared) / len(shared) if shared else float("inf")

    after, openai = distance(entries[m - 1] if len(entries) > m - 1 else None), \
        distance(entries[m] if len(entries) > m else None)
    if min(after, openai) > 0.5:
        raise ServedTeacherError(f"the teacher server at {client.cfg.url} gives log-probabilities for a text's tokens "
                                 f"that match none of its next-token answers (mean |Δ| {min(after, openai):.2f}); it "
                                 "cannot be a teacher for token-level KD as it is")
    def shown(d: float) -> float | None:  # JSON has no infinity: no shared token is null
        return round(d, 4) if d != float("inf") else None

    return after < openai, {"probe_distance_after": shown(after), "probe_distance_openai": shown(openai)}


def sparse_targets(answer: dict, seq, decoded: list[str], texts_of: dict[str, int], k: int, vocab: int,
                   after: bool) -> tuple[dict[str, "np.ndarray"], dict[str, int]]:
    """One text's cache fields from the server's answer: per position t (predicting token t + 1) the top-k
    log-probs and ids, the target's log-prob and a zero log-normaliser (the values are log-probs).
    A position the server gave nothing for (its first, when entries follow their token; a text it read
    otherwise) targets the text's next token alone; a target outside the top-k gets the rest mass
    spread evenly over the other tokens. Returns the fields and what was estimated."""
    import numpy as np

    n = len(seq)
    logprobs = np.full((n, k), PAD_LOGPROB, np.float32)
    indices = np.zeros((n, k), np.int64)
    target = np.zeros(n, np.float32)
    counts = {"positions": n, "without_teacher": 0, "target_estimated": 0, "unmapped_entries": 0}
    entries = answer["top_logprobs"]
    aligned = _aligned(answer["tokens"], seq, decoded)
    for t in range(n):
        nxt = int(seq[t + 1]) if t + 1 < n else None
        j = t if after else t + 1
        entry = entries[j] if aligned and j < len(entries) else None
        pairs: list[tuple[float, int]] = []
        if entry:
            used: set[int] = set()
            for text, value in sorted(entry.items(), key=lambda kv: -kv[1]):
                i = texts_of.get(text)
                if i is None:
                    counts["unmapped_entries"] += 1
                elif i not in used and len(pairs) < k:
                    used.add(i)
                    pairs.append((float(value), i))
        elif nxt is not None:
            pairs = [(0.0, nxt)]
            counts["without_teacher"] += 1
        taken = {i for _, i in pairs}
        spare = (i for i in range(vocab) if i not in taken)  # distinct ids for the empty slots
        for slot in range(k):
            if slot < len(pairs):
                logprobs[t, slot], indices[t, slot] = pairs[slot]
            else:
                indices[t, slot] = next(spare)
        if nxt is None:
            continue
        hit = next((v for v, i in pairs if i == nxt), None)
        if hit is None:
            rest = max(1.0 - float(np.exp(logprobs[t]).sum()), 1e-12)
            hit = float(np.log(rest / max(vocab - len(pairs), 1)))
            counts["target_estimated"] += 1
        target[t] = hit
    fields = {"topk_logprobs": logprobs.astype(np.float16),
              "topk_indices": indices.astype(np.uint16 if vocab <= 1 << 16 else np.int32),
              "target_logprob": target, "lse_t1": np.zeros(n, np.float32)}
    return fields, {**counts, "misread": int(not aligned)}
