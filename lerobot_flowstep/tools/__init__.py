"""What runs on top of the policies and envs: the embedded demo, in-memory training, diagnostics, latency
measurement, plots, benchmark statistics, and `lerobot-train` / `lerobot-eval` as subprocesses."""
