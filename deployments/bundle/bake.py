"""Put a model into the image at build time: a hub snapshot, or the default model converted from GGUF."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

TOKEN_FILE = Path("/run/secrets/hf_token")
# What from_pretrained reads; leaves out other formats' weights (.bin, .pth, .gguf, onnx/).
PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*"]


def download(model_id: str, revision: str, into: Path) -> None:
    from huggingface_hub import snapshot_download

    token = TOKEN_FILE.read_text().strip() if TOKEN_FILE.is_file() else None
    snapshot_download(model_id, revision=revision, local_dir=into, allow_patterns=PATTERNS, token=token)


def convert_default(into: Path) -> None:
    from backends.runner.loading import convert_gguf, default_gguf_path

    with tempfile.TemporaryDirectory() as cache:
        shutil.copytree(convert_gguf(default_gguf_path(), Path(cache)), into)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-id", default="", help="hub id; empty bakes the default model")
    parser.add_argument("--revision", default="main")
    parser.add_argument("--into", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.model_id:
        download(args.model_id, args.revision, args.into)
    else:
        convert_default(args.into)
    # Fail the build, not the first start, if the directory cannot be served.
    from backends.runner.loading import ModelSource, load_config

    load_config(ModelSource(str(args.into), args.into.name, True), trust_remote_code=False)
    print(f"baked {args.model_id or 'the default model'} into {args.into}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
