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

# ppl, quick profile (tiny decoder, train 128, eval 128..2048, embedded stdlib corpus), one seed,
# 600 of the profile's 1500 steps so that the whole script stays near an hour on 2 cores.
lenbench run --suite ppl --profile quick --pe "$PES" --seeds 0 --steps 600 --out "$OUT"

# timing, quick profile: one block of the 350M shape at 512..2048 (+ full-model estimates).
lenbench timing --profile quick --pe "$PES" --out "$OUT"

# The report only reads the cells above: rerun this line alone to rebuild it (e.g. after a change to
# lenbench/report/); it never changes a measurement.
lenbench report --results "$OUT" --out "$OUT/report" --format md,csv,tex,html
