#!/usr/bin/env bash
# docs/reproduction.md, end to end: corpora -> 8 anchors -> classifiers -> alpha sweep -> weights -> mixing sweep.
# ~45 min on a quiet 2-core CPU (2026-11-27 run); everything lands in runs/repro/ (git-ignored), then the tables
# and figures docs/reproduction.md quotes are copied to benchmarks/results/repro/ and docs/figures/.
#
#   bash jobs/reproduce.sh            # from the repository root, with the venv's lerpray on PATH or in .venv/bin
set -euo pipefail
export PATH="$PWD/.venv/bin:$PATH"
python jobs/build_corpora.py --out runs/repro/corpora --attributes sentiment,humor,simplicity,formality \
    --max-per-pole 2000 --seed 0
RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=900 lerpray train jobs/configs/repro_train.yaml --address local
lerpray eval classifiers runs/repro/corpora --out runs/repro/classifiers
lerpray eval sweep jobs/configs/repro_sweep.yaml
lerpray eval weights runs/repro/anchors --out runs/repro/weights
lerpray eval sweep jobs/configs/repro_mix.yaml
mkdir -p benchmarks/results/repro
cp runs/repro/sweep/{report.md,summary.csv,effects.csv,perplexity.csv,sweep.json} benchmarks/results/repro/
gzip -9 -c runs/repro/sweep/generations.csv > benchmarks/results/repro/generations.csv.gz   # every table's source
cp runs/repro/classifiers/metrics.json benchmarks/results/repro/classifiers.json
cp runs/repro/classifiers/pole_scores.json benchmarks/results/repro/pole_scores.json
cp runs/repro/mix/report.md benchmarks/results/repro/mix_report.md
cp runs/repro/mix/summary.csv benchmarks/results/repro/mix_summary.csv
gzip -9 -c runs/repro/mix/generations.csv > benchmarks/results/repro/mix_generations.csv.gz
cp runs/repro/weights/weights.json benchmarks/results/repro/weights.json
for name in scores_vs_alpha entanglement perplexity_vs_alpha; do
    cp "runs/repro/sweep/$name.png" "docs/figures/repro_$name.png"
done
cp runs/repro/mix/ternary_sentiment_humor_formality.png docs/figures/repro_ternary.png
cp runs/repro/mix/scores_vs_lambda_sentiment_simplicity.png docs/figures/repro_lambda_sentiment_simplicity.png
cp runs/repro/weights/weights_cosine.png docs/figures/repro_weights_cosine.png
