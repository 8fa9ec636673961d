"""models/vq.py imports vector-quantize-pytorch without torch._dynamo; the quantizer is the library's, bit for bit.

Each case runs in a fresh interpreter (the import happens once per process): one imports
the library through ``vector_quantize_class``, the other plainly (einx then registers its
ops with torch.compile and imports torch._dynamo). Both train the same EMA quantizer for a
few steps from the same seed; outputs, codes, losses and EMA buffers must be identical.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys
import torch
LEAN = sys.argv[1] == "lean"
registered = torch.compiler.allow_in_graph
if LEAN:
    from fedvq_app.models.vq import vector_quantize_class
    VectorQuantize = vector_quantize_class()
else:
    from vector_quantize_pytorch import VectorQuantize
torch.manual_seed(0)
vq = VectorQuantize(dim=8, codebook_size=16, codebook_dim=4, heads=2, separate_codebook_per_head=True, decay=0.8,
                    kmeans_init=True, threshold_ema_dead_code=1, accept_image_fmap=True, channel_last=False,
                    commitment_weight=1.0, rotation_trick=False)
x = torch.randn(6, 8, 3, 3, requires_grad=True)
out = {}
vq.train()
for step in range(4):
    quantized, codes, loss = vq(x * (1 + step / 4))
    loss.sum().backward()
out["quantized"] = quantized.detach().flatten().tolist()
out["codes"] = codes.flatten().tolist()
out["loss"] = loss.detach().flatten().tolist()
out["grad"] = x.grad.flatten().tolist()
out["embed"] = vq._codebook.embed.flatten().tolist()
out["cluster_size"] = vq._codebook.cluster_size.flatten().tolist()
vq.eval()
quantized, codes, _ = vq(x.detach())
out["eval_codes"] = codes.flatten().tolist()
out["dynamo"] = "torch._dynamo" in sys.modules
out["restored"] = torch.compiler.allow_in_graph is registered
print(json.dumps(out))
"""


def _run(mode: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs() -> dict[str, dict]:
    return {mode: _run(mode) for mode in ("lean", "plain")}


def test_the_lean_import_leaves_torch_dynamo_out_and_restores_torch_compiler(runs):
    assert runs["lean"]["dynamo"] is False
    assert runs["lean"]["restored"] is True
    # the plain import does pull it in: what the lean one saves (if this fails, the library no longer needs the trick)
    assert runs["plain"]["dynamo"] is True


def test_the_quantizer_is_bit_identical_to_a_plain_import(runs):
    lean, plain = runs["lean"], runs["plain"]
    for key in ("quantized", "codes", "loss", "grad", "embed", "cluster_size", "eval_codes"):
        assert lean[key] == plain[key], key
    assert len(set(lean["codes"])) > 1  # it quantized to several codes, not a constant
