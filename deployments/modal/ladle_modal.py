"""ladle on Modal: the GPU image as a web server that Modal scales with traffic (deployments/README.md).

modal deploy deployments/modal/ladle_modal.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import modal

# Built from Dockerfile.gpu (or deployments/bundle) and pushed where Modal can pull it.
IMAGE = os.environ.get("LADLE_IMAGE", "ghcr.io/your-org/ladle:gpu")
MODEL = os.environ.get("LADLE_MODEL", "HuggingFaceTB/SmolLM2-360M-Instruct")
PORT = 8000
MAX_BATCH_SIZE = 16
DRAIN_TIMEOUT = 20

image = modal.Image.from_registry(IMAGE).env(
    {
        "MODEL": MODEL,
        "PORT": str(PORT),
        "MAX_BATCH_SIZE": str(MAX_BATCH_SIZE),
        "DRAIN_TIMEOUT": str(DRAIN_TIMEOUT),
        # The volume keeps hub downloads and converted models across containers.
        "LADLE_CACHE": "/cache/ladle",
        "HF_HOME": "/cache/huggingface",
    }
)
cache = modal.Volume.from_name("ladle-cache", create_if_missing=True)
app = modal.App("ladle")


@app.cls(image=image, gpu="L4", volumes={"/cache": cache}, scaledown_window=300, startup_timeout=900)
# One container takes as many requests as its batch has rows, plus a few waiting for a free row.
@modal.concurrent(max_inputs=MAX_BATCH_SIZE + 8, target_inputs=MAX_BATCH_SIZE)
class Ladle:
    @modal.enter()
    def start(self) -> None:
        """Start ladle and wait until /health is 200, so that no request meets a loading model."""
        self.process = subprocess.Popen(["ladle", "--host", "0.0.0.0", "--port", str(PORT)])
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ladle exited with status {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=5):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        raise RuntimeError("ladle did not become ready")

    @modal.web_server(port=PORT, startup_timeout=60)
    def serve(self) -> None:
        """Modal forwards HTTP to the port ladle listens on; ladle runs already (see start)."""

    @modal.exit()
    def stop(self) -> None:
        """Drain: ladle lets requests in flight finish (DRAIN_TIMEOUT), then exits 0."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=DRAIN_TIMEOUT + 10)
