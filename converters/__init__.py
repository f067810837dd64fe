"""Checkpoint converters between glidre-jax and the official PyTorch GLiDRE.

    python -m converters.export_official   # glidre-jax run -> official PyTorch directory
    python -m converters.export_encoder    # fine-tuned text encoder -> HF model folder
    python -m converters.import_official   # official PyTorch directory -> glidre-jax run

`converters.torch_glidre` is a PyTorch GLiDRE with the official keys, used as
the oracle in tests.
"""
