"""Corpus classifiers against independent scorers, on corpus text and on generated text.

Fits one embedding classifier per attribute on a built corpus's held-out split (as `lerpray eval classifiers`
does), then, for every attribute with an independent scorer (lerpray.eval.lexical.INDEPENDENT):

- on the corpus's held-out text: each scorer's AUC at telling the two poles apart (the independent ones were never
  fitted on this text, so this checks that they measure the attribute the corpus means);
- on generated text (a CSV with a `text` column, e.g. the quickstart's generations.csv or a sweep's): the Spearman
  correlation between the classifier and each independent scorer, signed so that positive means they agree (a
  grade level is negated against P(simple)), i.e. whether the classifier still tracks the attribute on text unlike
  its training data.

    python benchmarks/scorer_agreement.py --corpora /tmp/corpora --generations runs/quickstart/generations.csv \
        --out benchmarks/results/scorer_agreement.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from _common import write_json  # benchmarks/_common.py (the script's folder is on sys.path)
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from lerpray.data.corpora import load_manifest, read_pole
from lerpray.eval.lexical import INDEPENDENT
from lerpray.eval.scorers import EmbeddingClassifier, get_scorer


def _auc(high: list[float], low: list[float], high_means_high_pole: bool) -> float:
    scores, labels = np.array(high + low), np.array([1] * len(high) + [0] * len(low))
    ok = np.isfinite(scores)
    auc = roc_auc_score(labels[ok], scores[ok])
    return float(auc if high_means_high_pole else 1.0 - auc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpora", type=Path, required=True)
    parser.add_argument("--generations", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--classifiers",
        type=Path,
        default=None,
        help="saved classifiers (`lerpray eval classifiers` output) instead of fitting them here",
    )
    args = parser.parse_args()

    manifest = load_manifest(args.corpora)
    texts = pd.read_csv(args.generations, keep_default_na=False)["text"].astype(str).tolist()
    result = {"corpora": str(args.corpora), "generations": str(args.generations), "n_generations": len(texts),
              "attributes": {}}  # fmt: skip
    for attribute, pair in manifest.attributes.items():
        if args.classifiers is not None:
            clf = EmbeddingClassifier.load(args.classifiers / f"{attribute}.json")
            metrics = clf.metrics
        else:
            clf, metrics = EmbeddingClassifier.from_corpora(args.corpora, attribute)
        high = read_pole(args.corpora, f"{attribute}.{pair.high}", "heldout")
        low = read_pole(args.corpora, f"{attribute}.{pair.low}", "heldout")
        row = {"classifier_test_accuracy": metrics["heldout_accuracy"], "classifier_n_test": metrics["n_heldout"],
               "n_heldout_texts": len(high) + len(low), "independent": {}}  # fmt: skip
        clf_gen = clf.score(texts)
        for name, measured in INDEPENDENT.items():
            if measured != attribute:
                continue
            scorer = get_scorer(name)
            same_way = scorer.high_pole == pair.high
            ind_gen = scorer.score(texts)
            ok = [i for i, v in enumerate(ind_gen) if math.isfinite(v)]
            rho = spearmanr([clf_gen[i] for i in ok], [ind_gen[i] for i in ok]).statistic
            row["independent"][name] = {
                "high_pole": scorer.high_pole,
                "auc_on_heldout_poles": _auc(scorer.score(high), scorer.score(low), same_way),
                "spearman_with_classifier_on_generations": float(rho if same_way else -rho),
                "n_generations_scored": len(ok),
            }
        result["attributes"][attribute] = row
        print(attribute, json.dumps(row, indent=None))
    write_json(args.out, result)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
