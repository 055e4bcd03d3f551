"""The serving benchmark as a script: `sgc bench --serve` (see sgc/bench/serve.py).

    python benchmarks/bench_serve.py --model smollm2-135m-instruct --rates 1,2,4,inf --requests 32
    python benchmarks/bench_serve.py --url http://127.0.0.1:8000 --model-name <name>   (any OpenAI server)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sgc.bench.serve import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
