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
        keys = [self.request_key(b) for b in bodies]
        texts: list[str | None] = [None] * len(prompts)
        todo = []
        for i, key in enumerate(keys):
            stored = self._stored(key)
            if stored is not None:
                texts[i] = _completion_text(stored["answer"], self.cfg)
                self.stats.stored += 1
            else:
                todo.append(i)
        if not todo:
            return texts  # type: ignore[return-value]
        self.check_model()
        from kd_edge.progress import Progress

        bar = Progress(total=len(todo), desc="served teacher", unit="prompt", enabled=progress)
        t0 = time.perf_counter()

        def one(i: int) -> None:
            answer = self._with_retries("completions", bodies[i], f"prompt {i}")
            text = _completion_text(answer, self.cfg)
            self._keep(keys[i], bodies[i], answer)
            texts[i] = text
            with self.stats.lock:
                self.stats.sent += 1
                self.stats.completion_tokens += int((answer.get("usage") or {}).get("completion_tokens") or 0)
                bar.update(1)

        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            futures = [pool.submit(one, i) for i in todo]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            for f in futures:
                if f.done() and not f.cancelled() and f.exception() is not None:
                    bar.close()
                    raise f.exception()
        bar.close()
        self.stats.seconds += time.perf_counter() - t0
        return texts  # type: ignore[return-value]

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
                 start_timeout: float = 60.0):
    """llama.cpp's OpenAI-compatible server (``python -m llama_cpp.server``, llama-cpp-python's server
    extra) serving ``gguf`` as ``alias`` on 127.0.0.1; yields its base URL. How the tests and
    ``benchmarks/served_teacher.py`` serve a teacher."""
    import subprocess
    import sys

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--model_alias", alias, "--n_threads", str(threads), "--n_ctx",
                             str(n_ctx), "--logits_all", "false"], stdout=out, stderr=subprocess.STDOUT)
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
