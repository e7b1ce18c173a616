"""Weight-space analysis of an anchor set: cosine similarity between the anchors' updates, per layer and overall.

Anchor k's update of a module is delta_k = s_k B_k A_k [d_out, d_in] (the update itself, never its blended
factors). The similarity of anchors a and b over a set of modules M is the cosine of their concatenated updates:

    cos(a, b) = sum_m <delta_a,m, delta_b,m>_F / sqrt(sum_m ||delta_a,m||_F^2 * sum_m ||delta_b,m||_F^2)

Each Frobenius inner product is computed through small rank-sized products instead of materialising d_out x d_in:

    <s_a B_a A_a, s_b B_b A_b>_F = s_a s_b tr(A_a^T B_a^T B_b A_b) = s_a s_b sum_ij (B_a^T B_b)_ij (A_a A_b^T)_ij

For all anchors of a module at once: stack A_cat [R, d_in] and B_cat [d_out, R] (columns scaled by s_k), form the
two R x R Gram matrices P = B_cat^T B_cat and Q = A_cat A_cat^T, and sum the elementwise product P * Q over each
(anchor a, anchor b) block: G = O^T (P * Q) O with O [R, K] the one-hot owner of each rank column. Cost
O((d_in + d_out) R^2) per module instead of O(K d_out d_in r) for the dense updates. Computed in float64.
A module an anchor does not adapt contributes zero to its update (and to its norm).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from lerpray.anchors import AnchorSet

__all__ = ["WeightSimilarity", "cosine_from_gram", "layer_of", "update_gram", "weight_similarity"]

_LAYER = re.compile(r"\.(\d+)\.")


def update_gram(factors: list[tuple[torch.Tensor, torch.Tensor, float] | None]) -> np.ndarray:
    """Frobenius inner products G[a, b] = <delta_a, delta_b>_F [K, K] of one module's updates.

    factors[k]: anchor k's (A [r_k, d_in], B [d_out, r_k], scale s_k), or None if anchor k does not adapt it.
    """
    present = [(k, f) for k, f in enumerate(factors) if f is not None]
    gram = np.zeros((len(factors), len(factors)))  # [K, K]
    if not present:
        return gram
    a_cat = torch.cat([a.double() for _, (a, _, _) in present])  # [R, d_in]
    b_cat = torch.cat([b.double() * s for _, (_, b, s) in present], dim=1)  # [d_out, R], column scaled by s_k
    owner = torch.cat([torch.full((a.shape[0],), k) for k, (a, _, _) in present])  # [R]
    one_hot = torch.nn.functional.one_hot(owner, len(factors)).double()  # [R, K]
    products = (b_cat.T @ b_cat) * (a_cat @ a_cat.T)  # [R, R]: (B^T B)_ij (A A^T)_ij
    return (one_hot.T @ products @ one_hot).numpy()  # [K, K]


def cosine_from_gram(gram: np.ndarray) -> np.ndarray:
    """Cosine matrix [K, K] from inner products; NaN where an anchor's update is zero."""
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))  # [K]
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = gram / np.outer(norms, norms)
    cos[np.outer(norms, norms) == 0] = np.nan
    return np.clip(cos, -1.0, 1.0)


def layer_of(module: str) -> str:
    """The layer a module path belongs to: "model.layers.3.self_attn.q_proj" -> "3"; no index -> "other"."""
    match = _LAYER.search(module)
    return match.group(1) if match else "other"


@dataclass
class WeightSimilarity:
    anchors: list[str]
    overall: np.ndarray  # [K, K] cosine over every adapted module
    per_layer: dict[str, np.ndarray]  # layer ("0", "1", ... or "other") -> [K, K]
    per_module: dict[str, np.ndarray]  # module path -> [K, K]
    norms: dict[str, float]  # anchor -> ||delta|| over every module (Frobenius norm of the concatenation)

    def to_json(self) -> dict:
        def mat(m: np.ndarray) -> list[list[float | None]]:
            return [[None if np.isnan(v) else float(v) for v in row] for row in m]

        return {"anchors": self.anchors, "norms": self.norms, "overall": mat(self.overall),
                "per_layer": {k: mat(v) for k, v in self.per_layer.items()},
                "per_module": {k: mat(v) for k, v in self.per_module.items()}}  # fmt: skip

    def save(self, out_dir: str | Path) -> Path:
        """weights.json (all matrices) in `out_dir`; its path. The heatmap is plots.plot_weight_similarity."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "weights.json").write_text(json.dumps(self.to_json(), indent=1))
        return out / "weights.json"


def weight_similarity(anchor_set: AnchorSet) -> WeightSimilarity:
    """Cosine similarity between the anchors' updates per module, per layer and overall."""
    names = [a.entry.name for a in anchor_set.anchors]
    modules = sorted({m for a in anchor_set.anchors for m in a.modules})
    per_module_gram = {}
    for module in tqdm(modules, desc="weight cosine", unit="module", disable=len(modules) < 50):
        per_module_gram[module] = update_gram([a.modules.get(module) for a in anchor_set.anchors])
    per_layer_gram: dict[str, np.ndarray] = {}
    for module, gram in per_module_gram.items():
        layer = layer_of(module)
        per_layer_gram[layer] = per_layer_gram.get(layer, 0.0) + gram
    overall = sum(per_module_gram.values(), np.zeros((len(names), len(names))))
    layers = sorted(per_layer_gram, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    return WeightSimilarity(
        anchors=names,
        overall=cosine_from_gram(overall),
        per_layer={k: cosine_from_gram(per_layer_gram[k]) for k in layers},
        per_module={k: cosine_from_gram(g) for k, g in per_module_gram.items()},
        norms={n: float(np.sqrt(max(overall[i, i], 0.0))) for i, n in enumerate(names)},
    )
