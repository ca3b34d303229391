"""What the flowstep policies share: the base config, the base policy (encoder, action queue, chunk
network plumbing) and the processor pipeline. Each policy folder adds only what is its own."""
