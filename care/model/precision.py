"""The precision of the trainable weights when the base runs in bf16.

`float32` (the classic recipe): the adapter weights stay in float32 and the step runs under bf16 autocast. Every
LoRA projection then casts its input to float32 (peft matches the input to the adapter's dtype), and autocast casts
it back, with the adapter weights, to bf16 for the matmul: two activation-sized copies and two weight casts per
projection and call, twice over under gradient checkpointing.

`bfloat16`: the adapter weights are bf16 in the model and the step runs without autocast, so nothing is cast;
the optimizer steps a float32 master copy (`MasterWeights`): each forward's bf16 gradients are added into float32
gradients, clipped and stepped there, and the result is rounded back into the model. The matmuls see the same bf16
operands as under autocast (autocast rounds the float32 weights to bf16 for every call), and gradients accumulate
and update in float32 as before, so the loss and the adapter gradients match the float32 recipe to bf16 rounding
(tests/test_precision.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from care.errors import CareError
from care.params import FitParams, Params


@dataclass
class Precision:
    """The trainable weights' dtype, whether the step runs under bf16 autocast, whether the optimizer keeps a
    float32 master copy, and why."""

    adapter_dtype: str  # float32 | bfloat16
    autocast: bool
    master: bool
    reason: str

    def as_dict(self) -> dict:
        return {"adapter_dtype": self.adapter_dtype, "autocast": self.autocast, "master_copy": self.master,
                "reason": self.reason}


def choose_precision(params: Params | FitParams, base_dtype: str, processes: int, device_type: str) -> Precision:
    """The precision of a fine-tune whose base weights are `base_dtype` ("float32" or "bfloat16") on `device_type`."""
    asked = params.train.adapter_dtype
    if base_dtype != "bfloat16":
        cuda = device_type == "cuda"
        return Precision("float32", cuda, False, "the base runs in float32" + ("; bf16 autocast on CUDA" if cuda else ""))
    if params.model.finetune == "full":
        return Precision("bfloat16", True, False, "full fine-tuning of a bf16 base; bf16 autocast")
    if asked == "bfloat16" and processes > 1:
        raise CareError("train.adapter_dtype=bfloat16 runs in one process (its float32 master copy is not "
                        "reduced over DDP); set train.num_processes=1 or train.adapter_dtype=float32")
    if asked == "float32" or (asked == "auto" and processes > 1):
        why = "train.adapter_dtype=float32" if asked == "float32" else \
            f"{processes} processes: DDP reduces the float32 adapter gradients"
        return Precision("float32", True, False, why + "; bf16 autocast")
    why = "train.adapter_dtype=bfloat16" if asked == "bfloat16" else "auto: a bf16 base in one process"
    return Precision("bfloat16", False, True, why + "; float32 master copy in the optimizer, no autocast")


class MasterWeights:
    """Float32 master copies of low-precision trainable parameters: the optimizer steps these."""

    def __init__(self, params: list):
        import torch

        self.params = params
        self.master = [p.detach().float().clone() for p in params]
        for m in self.master:
            m.grad = torch.zeros_like(m)
        for p in params:  # the model computes in bf16 from here on
            p.data = p.data.to(torch.bfloat16)

    def accumulate(self) -> None:
        """Add the bf16 gradients of the last backward into the float32 ones and free them."""
        import torch

        grads = [p.grad for p in self.params]
        if any(g is None for g in grads):
            raise CareError("a trainable weight got no gradient in this backward pass")
        torch._foreach_add_([m.grad for m in self.master], [g.float() for g in grads])
        for p in self.params:
            p.grad = None

    def write_back(self) -> None:
        """Round the stepped master weights into the model and zero the master gradients."""
        import torch

        torch._foreach_copy_([p.data for p in self.params], self.master)
        torch._foreach_zero_([m.grad for m in self.master])
