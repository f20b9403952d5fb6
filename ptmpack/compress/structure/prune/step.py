# ruff: noqa: RUF002 - formulas quote the standard's Greek letters
"""Structured pruning of attention heads and FFN neurons under a FLOPs budget (``compress --prune``, §7.3.2).

``--prune-method structure`` (the standard's structure-aware criterion): importance from
calibration data (:mod:`ptmpack.compress.structure.prune.importance`: first-order Taylor term plus the Fisher
approximation of the second-order term, cross-group blocks included; computed block by block on the
package's IR, so what earlier steps left — unified norms, per-layer head counts and FFN widths — is
scored like any model, before the checkpoint is read for the edit); an evolutionary search
(Table 46) over the per-group pruning ratios (q = (α heads, γ FFN); the residual group's ratio
stays 0 — pruning the hidden width would change every LayerNorm and embedding) minimising the
estimated loss increase subject to ``FLOPs ≤ C``; inside each group the units with the lowest
Fisher score ``-g_i + ½F_ii`` go first. ``--prune-method magnitude`` is the naive baseline at
the same budget: one equal ratio for the pruned groups, units ranked by the L2 norm of their
weights.

Heads are pruned in BERT models one head at a time, any number per layer. In LLaMA-family models
the unit is a KV group — one key/value head and the query heads that read it (one head without
GQA) — and every layer loses the same number of groups, so ``num_attention_heads``,
``num_key_value_heads`` (both rewritten) and ``head_dim`` (written explicitly, unchanged) describe
every layer and transformers loads the result; ``--prune query-heads`` removes query heads instead,
the same number from every KV group (KV heads stay). FFN neurons are pruned in both families. Every
layer keeps at least one head (KV group; query head per group) and one neuron. The checkpoint's tensors shrink; config.json gets
``intermediate_size`` when all layers keep the same width, and for pruned BERT heads
``ptmpack_layer_heads`` (each layer's count, for readers of config.json; ptmpack's graph builder
takes the counts from the tensor shapes) and ``pruned_heads`` (the ids transformers 4.x re-applies
on load; transformers 5 dropped it, so a head-pruned BERT, like a checkpoint with unequal FFN
widths, loads in ptmpack only).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from ptmpack.compress.report import StepRecord
from ptmpack.compress.spec import PRUNE_TARGETS, CompressSpec
from ptmpack.compress.step import StepContext
from ptmpack.compress.tree.checkpoint import (
    CONFIG,
    Checkpoint,
    read_json,
    refresh_parameters,
    refuse_unmerged_adapters,
    update_ptm_info,
    write_json,
)
from ptmpack.errors import UnsupportedError, UsageError

LAYER_HEADS = "ptmpack_layer_heads"
"""config.json key listing each layer's head count after head pruning."""
_FAMILIES = {"bert": "bert", "llama": "llama", "mistral": "llama", "qwen2": "llama"}
SEQ = 128
"""Sequence length at which attention FLOPs are counted (as in the step report)."""
FFN_MULTIPLE = 32
"""Pruned FFN widths stay multiples of this (when the original widths are), for group-wise quantization."""


def _family(config: dict[str, Any]) -> tuple[str, int]:
    """(``bert`` or ``llama``, query heads per key/value head: 1 for BERT, the KV group size for LLaMA).

    Raises:
        UnsupportedError: not a BERT or LLaMA-family model.
    """
    family = _FAMILIES.get(str(config.get("model_type")))
    if family is None:
        raise UnsupportedError(f"pruning supports BERT and LLaMA-family models, not {config.get('model_type')!r}")
    heads = int(config["num_attention_heads"])
    return family, 1 if family == "bert" else heads // int(config.get("num_key_value_heads") or heads)


def _modules(config: dict[str, Any], tensors: Collection[str]) -> tuple[list[str], dict[str, Any]]:
    """Each layer's name prefix and the module names (below it) of its attention and FFN projections.

    ``tensors``: the checkpoint's tensor names (a BERT may carry the ``bert.`` prefix of BertFor* heads).

    Raises:
        UnsupportedError: not BERT/LLaMA-family.
    """
    family, _ = _family(config)
    layers = int(config["num_hidden_layers"])
    if family == "bert":
        p = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""
        return [f"{p}encoder.layer.{i}." for i in range(layers)], {
            "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
            "o": "attention.output.dense", "in": ("intermediate.dense",), "down": "output.dense"}
    return [f"model.layers.{i}." for i in range(layers)], {
        "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
        "in": ("mlp.gate_proj", "mlp.up_proj"), "down": "mlp.down_proj"}


def _layout(ck: Checkpoint, config: dict[str, Any], query_heads: bool = False) -> dict[str, Any]:
    """Where each layer's prunable units live, how many each layer has and what one costs.

    The head unit (``unit``) is a BERT ``head``; in LLaMA-family models a KV ``group``: one
    key/value head with the ``group`` query heads that read it (query head ``h`` reads KV head
    ``h // group``, as in transformers' ``repeat_kv`` and the IR's ``attention``; without GQA a
    group is one head), or with ``query_heads`` one ``query`` head, whose KV head stays.

    Raises:
        UnsupportedError: not BERT/LLaMA-family, or a layer whose query heads are not
            ``group`` × its KV heads.
    """
    family, group = _family(config)
    heads, hidden = int(config["num_attention_heads"]), int(config["hidden_size"])
    pre, names = _modules(config, ck.tensors)
    head_dim = int(config.get("head_dim") or hidden // heads)
    kv = [ck.tensors[f"{w}{names['k']}.weight"].shape[0] // head_dim for w in pre]
    for w, k in zip(pre, kv, strict=True):
        q = ck.tensors[f"{w}{names['q']}.weight"].shape[0] // head_dim
        if q != k * group:
            raise UnsupportedError(f"{w}: {q} query heads for {k} key/value heads; head pruning needs {group} "
                                   "query heads per key/value head in every layer")
    unit = "head" if family == "bert" else "query" if query_heads else "group"
    width = group if unit == "group" else 1  # query heads per unit
    kv_rows = 0 if unit == "query" else 1  # key/value heads per unit
    ffn = [ck.tensors[f"{w}{names['down']}.weight"].shape[1] for w in pre]
    per_unit = 4 * hidden * head_dim * (width + kv_rows) + 4 * SEQ * head_dim * width
    per_neuron = 2 * hidden * (len(names["in"]) + 1)
    return {"family": family, "pre": pre, "names": names, "head_dim": head_dim, "group": group, "unit": unit,
            "width": width, "kv": kv, "heads": [k * group // width for k in kv], "ffn": ffn,
            "cost": {"heads": per_unit, "ffn": per_neuron}}


def _unit_rows(lay: dict[str, Any], unit: int) -> tuple[slice, slice | None]:
    """Rows of one head unit in the query (and output-projection columns) and in the key/value
    projections (None for a query head: its KV head stays for the rest of its group)."""
    d = lay["head_dim"]
    if lay["unit"] == "query":
        return slice(unit * d, (unit + 1) * d), None
    g = lay["width"]
    return slice(unit * g * d, (unit + 1) * g * d), slice(unit * d, (unit + 1) * d)


def _magnitude_scores(ck: Checkpoint, lay: dict[str, Any], group: str) -> np.ndarray:
    n, out = lay["names"], []
    for i, w in enumerate(lay["pre"]):
        if group == "heads":  # each projection converted once per layer, then sliced per unit
            m = {k: ck.f64(f"{w}{n[k]}.weight") for k in "qkvo"}
            for u in range(lay["heads"][i]):
                q, kv = _unit_rows(lay, u)
                out.append(float((m["q"][q] ** 2).sum())
                           + sum(float((m[k][kv] ** 2).sum()) for k in "kv" if kv is not None)
                           + float((m["o"][:, q] ** 2).sum()))
        else:
            s = sum((ck.f64(f"{w}{part}.weight") ** 2).sum(1) for part in n["in"])
            out.extend(s + (ck.f64(f"{w}{n['down']}.weight") ** 2).sum(0))
    return np.asarray(out)


def _order(scores: np.ndarray, units: list[tuple[int, int]]) -> np.ndarray:
    """Unit indices from least to most important, without each layer's most important unit (always kept)."""
    order = np.argsort(scores, kind="stable")
    best: dict[int, int] = {}
    for idx in order:
        best[units[idx][0]] = int(idx)
    keep = set(best.values())
    return np.asarray([int(i) for i in order if int(i) not in keep], dtype=np.int64)


class _Problem:
    """Selections and their FLOPs for per-group ratios."""

    def __init__(self, lay: dict[str, Any], groups: tuple[str, ...], scores: dict[str, np.ndarray], base: int) -> None:
        self.lay, self.groups, self.scores, self.base = lay, groups, scores, base
        self.units = {g: [(i, j) for i, c in enumerate(lay[g]) for j in range(c)] for g in groups}
        self.order = {g: _order(scores[g], self.units[g]) for g in groups}
        self.layer_of = {g: np.asarray([u[0] for u in self.units[g]], np.int64) for g in groups}
        widths = lay["ffn"]
        self.multiple = {"heads": 1, "ffn": FFN_MULTIPLE if all(w % FFN_MULTIPLE == 0 and w >= 4 * FFN_MULTIPLE
                                                                 for w in widths) else 1}
        self.buckets: list[list[int]] = []
        if "heads" in groups and lay["unit"] != "head":
            size = lay["group"] if lay["unit"] == "query" else None  # query heads: one bucket per KV group
            buckets: dict[tuple[int, int], list[int]] = {}
            for u in np.argsort(scores["heads"], kind="stable"):
                layer, j = self.units["heads"][int(u)]
                buckets.setdefault((layer, j // size if size else 0), []).append(int(u))
            self.buckets = list(buckets.values())

    def selection(self, ratios: np.ndarray) -> dict[str, list[int]]:
        """The ``ratio`` least important units of each group (never a layer's most important one).

        FFN removals per layer are rounded down to a multiple of :data:`FFN_MULTIPLE` (when the
        widths are multiples of it), so pruned widths still take the usual quantization group sizes.
        LLaMA-family heads go uniformly: every layer loses ``floor(ratio × its KV groups)`` of its
        own least important KV groups, or (``query`` units) every KV group loses
        ``floor(ratio × its query heads)`` of its least important query heads — at most all but
        one — so config.json keeps one count for every layer and transformers loads the result.
        """
        out = {}
        for g, r in zip(self.groups, ratios, strict=True):
            if g == "heads" and self.buckets:
                out[g] = [u for order in self.buckets
                          for u in order[: min(int(np.floor(float(r) * len(order) + 1e-9)), len(order) - 1)]]
                continue
            chosen = self.order[g][: int(np.floor(float(r) * len(self.units[g]) + 1e-9))]
            m = self.multiple[g]
            if m > 1 and len(chosen):
                layers = self.layer_of[g][chosen]
                keep = np.zeros(len(chosen), bool)
                for layer in np.unique(layers):
                    where = np.flatnonzero(layers == layer)
                    keep[where[: len(where) // m * m]] = True
                chosen = chosen[keep]
            out[g] = chosen.tolist()
        return out

    def flops(self, sel: dict[str, list[int]]) -> int:
        return self.base - sum(len(v) * self.lay["cost"][g] for g, v in sel.items())

    def project(self, direction: np.ndarray, budget: float) -> np.ndarray:
        """The smallest multiple of ``direction`` (ratios clipped to [0, 1]) whose FLOPs fit ``budget``."""
        lo, hi = 0.0, 1.0 / max(float(direction.max()), 1e-9)
        if self.flops(self.selection(np.clip(direction * hi, 0, 1))) > budget:
            return np.clip(direction * hi, 0, 1)
        for _ in range(30):
            mid = (lo + hi) / 2
            if self.flops(self.selection(np.clip(direction * mid, 0, 1))) <= budget:
                hi = mid
            else:
                lo = mid
        return np.clip(direction * hi, 0, 1)


def _evolve(problem: _Problem, cost: Any, budget: float, *, population: int = 16, generations: int = 12,
            seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """Table 46: random ratio vectors on the budget boundary, crossover + mutation, keep the fittest."""
    rng = np.random.default_rng(seed)
    k = len(problem.groups)

    def make(direction: np.ndarray) -> tuple[float, np.ndarray]:
        q = problem.project(np.maximum(direction, 1e-3), budget)
        sel = problem.selection(q)
        fit = cost(sel) if problem.flops(sel) <= budget else float("inf")
        return fit, q

    pop = [make(np.ones(k))] + [make(rng.uniform(0.05, 1.0, k)) for _ in range(population - 1)]
    history = []
    for _ in range(generations):
        pop.sort(key=lambda t: t[0])
        history.append(pop[0][0])
        parents = pop[: max(2, population // 2)]
        children = []
        while len(children) < population - len(parents):
            a, b = rng.choice(len(parents), 2, replace=False)
            w = rng.uniform(0, 1, k)
            child = w * parents[a][1] + (1 - w) * parents[b][1] + rng.normal(0, 0.05, k)
            children.append(make(child))
        pop = parents + children
    pop.sort(key=lambda t: t[0])
    return pop[0][1], history


def _apply(ck: Checkpoint, config: dict[str, Any], lay: dict[str, Any], problem: _Problem,
           sel: dict[str, list[int]]) -> dict[str, Any]:
    n = lay["names"]
    drop: dict[str, dict[int, list[int]]] = {g: {} for g in sel}
    for g, idx in sel.items():
        for u in idx:
            layer, j = problem.units[g][u]
            drop[g].setdefault(layer, []).append(j)
    for i, w in enumerate(lay["pre"]):
        if drop.get("heads", {}).get(i):
            kept = [_unit_rows(lay, u) for u in range(lay["heads"][i]) if u not in drop["heads"][i]]
            rows = {"q": np.concatenate([np.arange(q.start, q.stop) for q, _ in kept]),
                    "kv": None if lay["unit"] == "query" else np.concatenate([np.arange(kv.start, kv.stop)
                                                                             for _, kv in kept if kv is not None])}
            for key in "qkv":
                keep = rows["q" if key == "q" else "kv"]
                if keep is None:
                    continue
                ck.set(f"{w}{n[key]}.weight", ck.f64(f"{w}{n[key]}.weight")[keep])
                if f"{w}{n[key]}.bias" in ck.tensors:
                    ck.set(f"{w}{n[key]}.bias", ck.f64(f"{w}{n[key]}.bias")[keep])
            ck.set(f"{w}{n['o']}.weight", ck.f64(f"{w}{n['o']}.weight")[:, rows["q"]])
        if drop.get("ffn", {}).get(i):
            keep = np.setdiff1d(np.arange(lay["ffn"][i]), drop["ffn"][i])
            for part in n["in"]:
                ck.set(f"{w}{part}.weight", ck.f64(f"{w}{part}.weight")[keep])
                if f"{w}{part}.bias" in ck.tensors:
                    ck.set(f"{w}{part}.bias", ck.f64(f"{w}{part}.bias")[keep])
            ck.set(f"{w}{n['down']}.weight", ck.f64(f"{w}{n['down']}.weight")[:, keep])
    layers = range(len(lay["pre"]))
    left = [lay["heads"][i] - len(drop.get("heads", {}).get(i, [])) for i in layers]
    width = lay["width"]  # query heads per unit
    heads = [width * u for u in left]
    kv = lay["kv"] if lay["unit"] == "query" else left
    ffn = [lay["ffn"][i] - len(drop.get("ffn", {}).get(i, [])) for i in layers]
    gone_heads = {i: sorted(u * width + h for u in units for h in range(width))
                  for i, units in drop.get("heads", {}).items()}
    extra: dict[str, Any] = {}
    if "heads" in sel and lay["family"] == "bert":
        config[LAYER_HEADS] = heads
        total = int(config["num_attention_heads"])
        old = {int(k): list(v) for k, v in (config.get("pruned_heads") or {}).items()}
        for i, gone in gone_heads.items():
            alive = [h for h in range(total) if h not in old.get(i, [])]  # current index → original head id
            old[i] = sorted(set(old.get(i, [])) | {alive[j] for j in gone})
        config["pruned_heads"] = {str(i): v for i, v in sorted(old.items()) if v}
    elif "heads" in sel:
        # one count for every layer (uniform selection): the config transformers reads stays true
        config.update(num_attention_heads=max(heads), num_key_value_heads=max(kv), head_dim=lay["head_dim"])
        extra["layer_kv_heads"] = kv
        if lay["unit"] == "group":
            extra["removed_kv_heads"] = {str(i): sorted(v) for i, v in sorted(drop["heads"].items())}
    if len(set(ffn)) == 1:
        config["intermediate_size"] = ffn[0]
    update_ptm_info(ck.tree, num_heads=max(heads), intermediate_size=max(ffn), num_kv_heads=max(kv))
    removed = {g: {str(i): sorted(v) for i, v in sorted(d.items())} for g, d in drop.items()}
    if "heads" in removed:
        removed["heads"] = {str(i): v for i, v in sorted(gone_heads.items())}
    return {"layer_heads": heads, "layer_intermediate_sizes": ffn, "removed_units": removed, **extra}


def prune(tree: Path, target: str, budget: float, method: str = "structure", windows: np.ndarray | None = None,
          *, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """Prune ``tree``'s model (``target`` heads, query-heads, ffn or both) to ``budget`` × its FLOPs per token.

    ``heads`` removes BERT heads or LLaMA-family KV groups, ``query-heads`` (LLaMA family) query
    heads inside every KV group, ``both`` heads and FFN neurons. ``device``: where the structure
    method's importance pass trains (:func:`~ptmpack.compress.structure.prune.importance.importance`).

    Raises:
        UsageError: bad target, method or budget; the structure method without calibration windows.
        UnsupportedError: an architecture or group that cannot be pruned, or torch missing (structure).
    """
    from ptmpack.compress.eval.quality import flops_per_token
    from ptmpack.compress.tree.rebuild import rebuild_graph

    if target not in PRUNE_TARGETS or method not in ("structure", "magnitude"):
        raise UsageError(f"--prune takes {', '.join(PRUNE_TARGETS)}; --prune-method structure or magnitude")
    if not 0.0 < budget <= 1.0:
        raise UsageError(f"--flops-budget must lie in (0, 1], got {budget}")
    refuse_unmerged_adapters(tree, "--prune")
    config = read_json(tree, CONFIG)
    family, group = _family(config)
    groups = ("heads", "ffn") if target == "both" else ("heads",) if target == "query-heads" else (target,)
    query_heads = target == "query-heads"
    if query_heads and family == "bert":
        raise UnsupportedError("--prune query-heads prunes query heads inside grouped key/value heads (LLaMA "
                               "family); a BERT head has its own keys and values", hint="use --prune heads")
    if query_heads and group < 2:
        raise UnsupportedError("--prune query-heads keeps at least one query head per key/value head, and this "
                               "model has one (no grouped KV heads), so none can be removed", hint="use --prune heads")
    if "heads" in groups and family != "bert" and not query_heads and int(config.get("num_key_value_heads") or 2) < 2:
        raise UnsupportedError("--prune heads removes whole key/value groups (a KV head and the query heads that "
                               "read it) and keeps at least one per layer; this model has one KV head per layer "
                               "(multi-query attention), so no group can be removed",
                               hint="use --prune query-heads (query heads inside the group) or --prune ffn")
    imp = None
    if method == "structure":
        if windows is None:
            raise UsageError("--prune-method structure needs calibration text", hint="give --calib TEXT")
        from ptmpack.compress.structure.prune.importance import importance
        from ptmpack.compress.tree.weights import WeightFiles

        # before the checkpoint is read: the importance pass holds one block's weights, never the model
        pre, names = _modules(config, WeightFiles(tree / "Model").names())
        sites = {g: [f"{w}{names['o' if g == 'heads' else 'down']}.weight" for w in pre] for g in groups}
        imp = importance(tree, sites, windows, encoder=family == "bert", seed=seed, device=device).merged(
            "heads", 1 if query_heads else group)
    ck = Checkpoint.load(tree)
    lay = _layout(ck, config, query_heads)
    base = flops_per_token({n: t.shape for n, t in ck.tensors.items()}, config, SEQ)
    limit = budget * base
    if imp is not None:
        diag = imp.diag_score()
        scores = {g: diag[imp.offset[g]: imp.offset[g] + len(imp.units[g])] for g in groups}
        problem = _Problem(lay, groups, scores, base)

        def cost(sel: dict[str, list[int]]) -> float:
            return imp.loss_change(np.concatenate([np.asarray(v, int) + imp.offset[g] for g, v in sel.items()]))

        ratios, history = _evolve(problem, cost, limit, seed=seed)
        estimated = cost(problem.selection(ratios))
    else:
        scores = {g: _magnitude_scores(ck, lay, g) for g in groups}
        problem = _Problem(lay, groups, scores, base)
        ratios, history, estimated = problem.project(np.ones(len(groups)), limit), [], None
    sel = problem.selection(ratios)
    if problem.flops(sel) > limit:
        unit = {"head": "a head", "group": "a KV group (a key/value head and its query heads)",
                "query": "a query head per KV head"}[lay["unit"]]
        raise UnsupportedError(f"the budget {budget} cannot be met while keeping {unit} and an FFN neuron per layer "
                               f"(the most that can go leaves {problem.flops(problem.selection(np.ones(len(groups)))) / base:.3f} "
                               f"of the FLOPs with --prune {target})")
    shapes = _apply(ck, config, lay, problem, sel)
    ck.save()
    refresh_parameters(ck)
    write_json(tree, CONFIG, config)
    rebuild_graph(tree)
    return {"method": f"prune_{method}", "target": target, "flops_budget": budget,
            "ratios": {g: round(float(r), 4) for g, r in zip(groups, ratios, strict=True)},
            "removed": {g: len(v) for g, v in sel.items()}, "estimated_loss_increase": estimated,
            "search_best_per_generation": history, **shapes,
            "flops_fraction_kept": problem.flops(sel) / base}


class PruneStep:
    """Pipeline step ``--prune heads|query-heads|ffn|both`` (``--prune-method structure|magnitude``) with the before/after
    report (a :class:`ptmpack.compress.step.Step`)."""

    def check(self, spec: CompressSpec) -> None:
        """Nothing beyond :meth:`CompressSpec.check`, which pairs ``--prune`` with ``--flops-budget``."""

    def run(self, tree: Path, ctx: StepContext) -> StepRecord:
        """Prune to the FLOPs budget (:func:`prune`).

        Raises:
            PtmError: as :func:`prune`.
        """
        from ptmpack.compress.eval.probe import step_windows

        spec = ctx.spec
        if spec.prune is None or spec.flops_budget is None:
            raise UsageError("--prune and --flops-budget go together")
        windows = step_windows(tree, ctx) if spec.prune_method == "structure" else None
        record = prune(Path(tree), spec.prune, float(spec.flops_budget), spec.prune_method, windows,
                       seed=int(spec.calib_seed or 0), device=spec.device)
        return StepRecord("prune", str(record.pop("method")), details=record)
