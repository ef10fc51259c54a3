"""Build a small random-weight Qwen2-shaped model directory for the demo (nothing downloaded).

No pretrained model can be fetched on these machines; the demo shows the confidential path
(package → policy → unlock) on a model built here. Customers package their own fine-tuned model.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.tiny_model import build_tiny_model

if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-model")
    print(f"Built demo model in {build_tiny_model(out)}")
