"""Hugging Face Hub: model and dataset cards, checkpoint checks and staging, and the `push` /
`push-dataset` commands."""
