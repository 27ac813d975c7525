"""`evaluate` stage: lm-evaluation-harness suites (the papers' benchmarks; a local task on the toy world) and a
reward-model-judged score, per (model, suite). See docs/evaluate.md."""
