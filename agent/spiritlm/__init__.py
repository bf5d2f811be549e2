"""The offline SpiRit-LM stack, compatible with Meta's release (checkpoints, formats, results)."""
