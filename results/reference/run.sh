#!/usr/bin/env bash
# The reference results of README.md: lenbench's quick profiles run for real on a 2-core CPU.
# Run from the repository root:  bash results/reference/run.sh
# Every number under results/reference/ was written by these commands (never edited by hand).
set -euo pipefail
OUT=results/reference
PES=nope,rope,alibi,kerple,fire,dape-kerple

# CHE, quick profile (its tasks even_pairs and bucket_sort, 3000 steps, 18 test lengths x 144
# samples; suites/che.yaml says why), 2 seeds, one worker per core.
lenbench run --suite che --profile quick --pe "$PES" --seeds 0,1 --out "$OUT" --executor local --workers 2

# ppl, quick profile (tiny decoder, train 128 bpe:4096 tokens, evaluate 128..2048 on the same
# fixed targets at every length, embedded stdlib corpus split by content with near-duplicates
# dropped), 2 seeds, 600 of the profile's 1500 steps so that the script stays near an hour.
# The trained models (model.pt, model.json) stay out of the repository (.gitignore): results, not
# weights; rerun a cell locally for `lenbench viz`.
lenbench run --suite ppl --profile quick --pe "$PES" --seeds 0,1 --steps 600 --out "$OUT" --executor local --workers 2

# timing, quick profile: one block of the 350M shape at 512..2048 (+ full-model estimates), both
# modes, the PEs plus the identical-work control (rope:base=10001) in interleaved rounds
# (docs/timing.md). Table 1's quantity (every PE on DAPE's unfused path) first, then each PE on its
# fastest kernel. Groups measured before the interleaved protocol (one PE per folder, unpaired)
# are removed first so that the report shows only paired ratios.
rm -rf "$OUT/timing"
lenbench timing --profile quick --pe "$PES" --backend paper --out "$OUT"
lenbench timing --profile quick --pe "$PES" --backend fastest --out "$OUT"
# Fused against fused (DAPE-Kerple / Kerple on their fastest kernels), for README: re-reads the
# groups above with another Ratio denominator, times nothing.
lenbench report --results "$OUT" --suite timing --reference-pe kerple --out /tmp/lenbench-timing-vs-kerple --format md,csv

# The report only reads the cells above: rerun this line alone to rebuild it (e.g. after a change to
# lenbench/report/); it never changes a measurement.
lenbench report --results "$OUT" --out "$OUT/report" --format md,csv,tex,html
