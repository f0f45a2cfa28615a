"""The recipe: one YAML file describing a whole run, validated by pydantic.

``load_recipe`` reads the YAML, applies ``--set key=value`` overrides and validates, turning every
mistake into a one-line ``ConfigError`` that names the file, the line or the dotted key, and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kd_edge.bench.config import BenchConfig
from kd_edge.data.config import DataConfig
from kd_edge.distill.config import DistillConfig, EnsembleConfig, StudentConfig, TeacherConfig
from kd_edge.errors import ConfigError
from kd_edge.evaluate.config import EvaluateConfig
from kd_edge.export.config import ExportConfig
from kd_edge.gate import GateConfig
from kd_edge.registry import closest
from kd_edge.tasks.kinds import KINDS
from kd_edge.report.config import ReportConfig
from kd_edge.verify.config import VerifyConfig

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
DEFAULT_RECIPE = "minilm-l6-to-l2"


class Recipe(BaseModel):
    """A teacher -> student job from data to report."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Run name; the default output folder is runs/<name>.")
    task: str = Field("sentence_embedding",
                      description=f"Task adapter: {', '.join(KINDS)} (`kd-edge list tasks`).")
    seed: int = Field(0, description="Seed for splits, initialisation and data order.")
    teacher: TeacherConfig
    ensemble: EnsembleConfig | None = Field(None, description="More teachers, distilled from together.")
    data: DataConfig = Field(default_factory=DataConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    gate: GateConfig = Field(default_factory=GateConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("must be a plain folder name (no '/', not starting with '.')")
        return v

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from kd_edge.tasks import TASKS

        TASKS.check(v)
        return v

    def trains_baseline(self) -> bool:
        """Whether the run trains the no-teacher baseline (``distill.baseline``; default: causal LMs)."""
        from kd_edge.tasks.kinds import task_kind

        return task_kind(self.task).is_lm if self.distill.baseline is None else self.distill.baseline

    @model_validator(mode="after")
    def _baseline_of_a_causal_lm(self) -> "Recipe":
        from kd_edge.tasks.kinds import task_kind

        if self.distill.baseline and not task_kind(self.task).is_lm:
            raise ValueError(f"distill.baseline trains on the next-token loss alone, which only causal LMs have "
                             f"(task: {self.task}); remove it")
        if self.distill.on_policy and not task_kind(self.task).is_lm:
            raise ValueError(f"distill.on_policy has the student generate text, which only causal LMs do "
                             f"(task: {self.task}); remove it")
        d = self.distill
        if self.teacher.cache_values == "curve":
            self._check_curve()
        if self.student.tokenizer:
            self._check_cross_tokenizer()
        if self.teacher.server:
            self._check_served()
        if self.student.vocabulary == "trim":
            self._check_trim()
        if any(t.server for t in (self.ensemble.teachers if self.ensemble else [])):
            raise ValueError("ensemble.teachers: a served teacher is only the recipe's `teacher`; remove server there")
        return self

    def _check_curve(self) -> None:
        """A curve-kept cache fits a few coefficients to the ranks after the exactly kept ones."""
        from kd_edge.tasks.kinds import CURVE_DEGREE, CURVE_EXACT

        least = 2 * (CURVE_EXACT + CURVE_DEGREE + 1)
        if self.teacher.top_k < least:
            raise ValueError(f"teacher.cache_values: curve fits {CURVE_DEGREE + 1} coefficients to the top-k after the "
                             f"{CURVE_EXACT} largest; it needs teacher.top_k >= {least} (or cache_values: fp16)")
        if self.teacher.server:
            raise ValueError("teacher.cache_values: curve is for a teacher loaded here; a served teacher's "
                             "log-probabilities are kept as it sent them: remove one of the two")

    def _check_cross_tokenizer(self) -> None:
        """What a student with its own tokenizer can learn from: the teacher's cached distributions at the
        positions both tokenizations share, through a loss that accepts two vocabularies."""
        from kd_edge.distill import CROSS_TOKENIZER
        from kd_edge.tasks.kinds import task_kind

        if not task_kind(self.task).is_lm:
            raise ValueError(f"student.tokenizer is for causal LMs (task: {self.task}); an encoder student reads "
                             "the teacher's tokens: remove it")
        d = self.distill
        other = [c.name for c in d.losses if c.name not in CROSS_TOKENIZER]
        if other:
            raise ValueError(f"loss {other[0]} pairs teacher and student token ids of one vocabulary, which a student "
                             f"with its own tokenizer (student.tokenizer) does not share; the losses that accept "
                             f"another tokenizer are {', '.join(CROSS_TOKENIZER)}")
        if d.mode != "offline" or d.on_policy:
            raise ValueError("a student with its own tokenizer learns from the teacher's cached outputs, aligned "
                             "once to its tokens (distill.mode: offline); remove on_policy / set mode: offline")

    def _check_trim(self) -> None:
        """A trimmed vocabulary is cut from the teacher's table once, for a student that learns from cached outputs."""
        from kd_edge.tasks.kinds import task_kind

        if task_kind(self.task).is_lm:
            raise ValueError("student.vocabulary: trim is for encoders in this version; a causal LM can be given a "
                             "smaller tokenizer of its own (`kd-edge tokenizer`, student.tokenizer)")
        if self.student.tokenizer:
            raise ValueError("student.vocabulary: trim cuts the teacher's vocabulary; student.tokenizer gives another "
                             "one: remove one of the two")
        if self.student.init == "pretrained":
            raise ValueError("student.vocabulary: trim cuts the teacher's embedding table for a student built from "
                             "it (init: teacher_layers, config or prune); a pretrained student keeps its own")
        if self.distill.mode != "offline":
            raise ValueError("student.vocabulary: trim renumbers the tokens the student reads, which a live teacher "
                             "cannot read; set distill.mode: offline")

    def _check_served(self) -> None:
        """What a served teacher can give: text (sequence-level and rationale data) and, where the server
        returns them, the prompt's top-k log-probabilities at temperature 1 (token-level KD, offline)."""
        from kd_edge.distill import needs_of

        d = self.distill
        writes = d.generate or (d.rationale and d.rationale.source == "teacher")
        token_level = [c for c in d.losses if needs_of(c.name) == "logits"]
        if not writes and not token_level:
            raise ValueError("teacher.server is set, but nothing asks the served teacher: it writes the training text "
                             "of distill.generate or distill.rationale (source: teacher), and scores text for the kl, "
                             "reverse_kl and jsd losses; add one of those or remove teacher.server")
        other = [c.name for c in d.losses if needs_of(c.name) in ("hidden", "attentions", "pooled")]
        if other:
            raise ValueError(f"loss {other[0]} reads the teacher's layers, which a served teacher does not send; remove "
                             "it or teacher.server")
        if not token_level:
            return
        if d.mode != "offline" or d.on_policy:
            raise ValueError("a served teacher's log-probabilities are cached once (distill.mode: offline); on-policy "
                             "and live distillation would ask the server every step: use mode: offline")
        for c in token_level:
            if c.name == "logit_mse":
                raise ValueError("logit_mse compares raw logits, which a server does not send (only log-probabilities); "
                                 "use kl, reverse_kl or jsd with teacher.server")
            if (c.params.get("temperature") or 1.0) != 1.0:
                raise ValueError(f"loss {c.name}: a served teacher gives log-probabilities at temperature 1 only (its "
                                 f"top-k at another temperature needs the whole distribution); set temperature: 1.0")


def default_recipe_path() -> Path:
    """The recipe used when `kd-edge run` is given none (shipped inside the package)."""
    return RECIPES_DIR / f"{DEFAULT_RECIPE}.yaml"


def find_recipe(ref: str | Path | None) -> Path:
    """Resolve a recipe argument: a path, or the name of a bundled recipe, or None for the default."""
    if ref is None:
        return default_recipe_path()
    path = Path(ref)
    if path.is_file():
        return path
    bundled = RECIPES_DIR / f"{ref}.yaml"
    if not path.suffix and bundled.is_file():
        return bundled
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    if path.is_dir():
        raise ConfigError(f"recipe '{ref}' is a folder, not a YAML file; pass the recipe file inside it")
    raise ConfigError(
        f"recipe file '{ref}' does not exist; pass a path to a .yaml recipe, a bundled recipe name "
        f"({', '.join(names)}), or write a starter with `kd-edge init`"
    )


def parse_yaml(text: str, origin: str) -> dict[str, Any]:
    """Parse recipe YAML, reporting syntax errors with their line and column."""
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{origin}: YAML syntax error{where}: {e.problem or e.context}; fix the YAML there") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{origin}: not valid YAML ({e}); fix the file") from e
    if data is None:
        raise ConfigError(f"{origin} is empty; write a recipe into it (see `kd-edge init`)")
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must be a mapping of recipe keys (name, teacher, data, ...), not a "
                          f"{type(data).__name__}; write `key: value` lines (`kd-edge init` writes a starter)")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a nested recipe mapping."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set '{item}' has no value; write key.sub=value, e.g. --set distill.epochs=2")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set '{item}': the value is not valid YAML; quote it") from e
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set '{item}': '{part}' is a value, not a section; set '{part}' itself "
                                  f"(--set {part}=...) or check the key's spelling")
            node = child
        node[parts[-1]] = value
    return data


def _fields_at(loc: tuple) -> list[str]:
    """The valid keys of the recipe section at ``loc`` (for 'did you mean')."""
    model: Any = Recipe
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif args:
            model = args[0]
        else:
            return []
    return list(getattr(model, "model_fields", {}))


def validation_message(err: ValidationError, origin: str) -> str:
    """Turn pydantic's errors into one line: each offending dotted key and what is wrong."""
    parts = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            hint = closest(str(loc[-1]), _fields_at(loc))
            parts.append(f"unknown key '{key}'{hint}")
        elif e["type"] == "missing":
            parts.append(f"missing key '{key}'")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            parts.append(f"'{key}': {msg} (got {e.get('input')!r})" if key else msg)
    return f"{origin}: " + "; ".join(parts)


def recipe_from_dict(data: dict[str, Any], origin: str) -> Recipe:
    """Validate a recipe mapping."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise ConfigError(validation_message(e, origin) + "; fix the recipe (`kd-edge init` writes a valid one)") from e


def load_recipe(ref: str | Path | None = None, overrides: list[str] | None = None) -> tuple[Recipe, Path]:
    """Find, parse, override and validate a recipe; return it with the file it came from."""
    from kd_edge.paths import read_text

    path = find_recipe(ref)
    data = parse_yaml(read_text(path, "recipe", "pass a readable .yaml recipe"), str(path))
    data = apply_overrides(data, overrides or [])
    return recipe_from_dict(data, str(path)), path


def recipe_to_yaml(recipe: Recipe) -> str:
    """The recipe with every default filled in, as YAML."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
