"""One module per model family: its attention adapter (clamp/quant/attention.py) and its
reference-layout sites (clamp/quant/reference.py), registered in pyproject.toml under the entry
point group ``clamp_vit_bench.families``. README "Adding a model family" walks through one."""
