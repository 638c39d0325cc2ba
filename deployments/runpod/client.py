"""Call a RunPod endpoint running ladle with the OpenAI client: queue endpoint or load balancer."""

from __future__ import annotations

import os
import sys

from openai import OpenAI

ENDPOINT_ID = os.environ["RUNPOD_ENDPOINT_ID"]
API_KEY = os.environ["RUNPOD_API_KEY"]
# A queue endpoint runs `python -m handler.serverless`; RunPod's OpenAI route turns each request into
# a job. A load-balancer endpoint runs ladle's HTTP server and RunPod forwards requests to it.
BASE_URLS = {
    "queue": f"https://api.runpod.ai/v2/{ENDPOINT_ID}/openai/v1",
    "lb": f"https://{ENDPOINT_ID}.api.runpod.ai/v1",
}


def main() -> int:
    kind = sys.argv[1] if len(sys.argv) > 1 else "queue"
    client = OpenAI(base_url=BASE_URLS[kind], api_key=API_KEY)
    stream = client.chat.completions.create(
        model="any",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=64,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
