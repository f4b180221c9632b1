"""The model's readout as a linear map: final norm with its scale frozen, then unembedding.

Every supported final norm has the form y = gain * P(x) / s(x) + bias, where P is the identity (RMSNorm) or
subtracts the mean over the hidden dimension (LayerNorm), and s(x) is the root mean square of P(x) (plus the
norm's epsilon). The form is read off the norm module itself by probing it (so Gemma's 1 + weight, Cohere's
bias-free LayerNorm and OLMo's weightless one need no table), and checked on a random input: a norm of another
form is refused. With s frozen, the logits are linear in the residual stream:

    logits = logit_scale * (W_U A (gain * P(x)) / s + W_U A bias + a + b_U)

where A, a are the projection some models apply after the norm (OPT-350m) and b_U the unembedding's bias; the
soft-cap (Gemma 2, 3) comes after all of this.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from layerscope.errors import UnsupportedArchitecture
from layerscope.models.adapter import ModelAdapter


@dataclass(frozen=True)
class NormForm:
    """y = gain * P(x) / s(x) + bias, float32 on the norm's device; `centres`: P subtracts the mean."""

    gain: torch.Tensor
    bias: torch.Tensor
    centres: bool

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """P(x) over the last dimension."""
        return x - x.mean(dim=-1, keepdim=True) if self.centres else x

    def scale(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """s(x) for residual states x (..., hidden), measured from the norm's own output, so the norm's epsilon
        is included: s = |gain * P(x)| / |norm(x) - bias|. Shape (..., 1)."""
        out = _apply(norm, x) - self.bias
        return (self.gain * self.project(x.float())).norm(dim=-1, keepdim=True) / out.norm(dim=-1, keepdim=True)


def _apply(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The norm on float32 input, computed in the norm's own dtype, returned as float32."""
    dtype = next(iter(norm.parameters()), x).dtype
    with torch.inference_mode():
        return norm(x.to(dtype)).float()


def norm_form(adapter: ModelAdapter) -> NormForm:
    """The final norm's form (see the module docstring), or the identity where the model has none."""
    # the final norm sits with the unembedding (and may have no parameters)
    return module_norm_form(
        adapter.final_norm,
        int(adapter.config.hidden_size),
        adapter.output_device,
        f"Architecture '{adapter.family}': the final norm",
    )


def module_norm_form(norm: nn.Module, hidden: int, device: torch.device, what: str) -> NormForm:
    """The form of a norm module (the identity for nn.Identity), probed and checked; `what` names it in the
    refusal of a norm of another form."""
    if isinstance(norm, nn.Identity):
        return NormForm(torch.ones(hidden, device=device), torch.zeros(hidden, device=device), centres=False)
    ones = torch.ones(hidden, device=device)
    bias = _apply(norm, torch.zeros(hidden, device=device))
    centres = bool(torch.allclose(_apply(norm, ones), _apply(norm, -ones), atol=1e-3))
    signs = torch.where(torch.arange(hidden, device=device) % 2 == 0, 1.0, -1.0)  # P(signs) is never 0 per entry
    probe = signs - signs.mean() if centres else signs
    # norm(probe) - norm(-probe) = 2 gain * probe / s(probe), and s(probe) = rms(probe) up to epsilon
    gain = (_apply(norm, signs) - _apply(norm, -signs)) / 2 * probe.pow(2).mean().sqrt() / probe
    form = NormForm(gain, bias, centres)
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(4, hidden, generator=generator).to(device)
    predicted = form.gain * form.project(x) / form.project(x).pow(2).mean(dim=-1, keepdim=True).sqrt() + form.bias
    actual = _apply(norm, x)
    tolerance = 1e-4 if next(iter(norm.parameters()), x).dtype == torch.float32 else 3e-2
    if not float((predicted - actual).abs().max()) <= tolerance * (1 + float(actual.abs().max())):
        raise UnsupportedArchitecture(
            f"{what} ({type(norm).__name__}) is not an RMSNorm or LayerNorm with an elementwise weight, so it "
            "cannot be linearised; refusing a wrong readout."
        )
    return form


def readout_matrix(adapter: ModelAdapter, form: NormForm) -> torch.Tensor:
    """(vocab, hidden) float32: row v is the direction in the residual stream whose dot product with P(x) / s
    gives token v's logit before the logit scale, i.e. W_U A diag(gain), centred for a LayerNorm."""
    unembed = adapter.unembed.weight.float().to(form.gain.device)
    after = adapter.after_norm
    if not isinstance(after, nn.Identity):  # A: the after-norm projection's matrix, read off the module
        eye = torch.eye(len(form.gain), device=form.gain.device)
        columns = _apply(after, eye) - _apply(after, torch.zeros_like(eye[:1]))  # row i = A e_i
        unembed = unembed @ columns.T
    return form.project(unembed * form.gain)


def readout_bias(adapter: ModelAdapter, form: NormForm) -> torch.Tensor:
    """(vocab,) float32: the logits' part that does not depend on the residual stream, before the logit scale
    (W_U A bias + W_U a + b_U): what the parts of a logit leave out."""
    bias = form.bias[None]
    after = adapter.after_norm
    if not isinstance(after, nn.Identity):
        bias = _apply(after, bias)
    unembed_bias = getattr(adapter.unembed, "bias", None)
    logits = bias @ adapter.unembed.weight.float().to(bias.device).T
    return logits[0] + (0 if unembed_bias is None else unembed_bias.float().to(bias.device))
