"""Unrolled GAN: G takes its step against D advanced k optimizer steps, differentiating through them.

Metz, Poole, Pfau & Sohl-Dickstein (2017), "Unrolled Generative Adversarial Networks"
(poolio/unrolled_gan). A generator that jumps to the mode D currently favours is punished only
after D has moved; unrolling shows G how D will react to its samples, so that chasing one mode
stops paying. For each G update, with D's parameters θ_D and its optimizer's state s_D:

    x ~ data (one batch: trainer.real_batch()),  z as in G's step,  fake = G(z) as D sees it
    θ₀, s₀ = θ_D, s_D                                          (copies; D itself is untouched)
    for i = 0 … k−1:                                           # the same x and z for all k steps
        L_D(θᵢ) = loss_D(D_θᵢ(x), D_θᵢ(fake)) + other plugins' D terms
        θᵢ₊₁, sᵢ₊₁ = update(θᵢ, ∇_θ L_D(θᵢ), sᵢ)                  # D's own rule: Adam, AdamW or SGD
    G minimizes loss_G(D_θₖ(fake)),   with ∂θₖ/∂fake taken through all k updates (second order)
    (objective "saddle": G maximizes L_D(θₖ) itself, on the same x and fake; see below)

``update`` is D's optimizer, read from ``trainer.optimizers["D"]`` (lr, betas, eps,
weight_decay, momentum, ... and the current exp_avg / exp_avg_sq / step or momentum buffers)
and written out differentiably. ``steps = 0`` is the vanilla G step. ``backprop = false`` is
the first-order variant: θₖ is computed the same way but treated as constants, so G only sees
D's future state, not how its own samples moved D there; the paper (and PROTOCOLS.md) count it
as a different, weaker method.

G's objective (option ``objective``). The paper's surrogate is f_K(θ_G, θ_D) = f(θ_G, θ_D^K): the
saddle objective at the unrolled parameters, real term included, and poolio/unrolled_gan's demo
trains G on ``-unrolled_loss``, D's whole cross-entropy at θₖ (cell 13). Its real term
−E_x log D_θₖ(x) depends on G through θₖ, so G also sees how its samples move D's verdict on the
data. ``"saddle"`` is that: G minimizes −L_D(θₖ; x, fake) (with the logistic losses, the minimax
G loss −softplus(ℓ_fake) plus the real term). ``"core"`` (default, kept because the benchmark's
stored unrolled rows were run with it) is the core's G loss on D_θₖ(fake) alone (e.g. the
non-saturating softplus(−ℓ_fake)), without the real term: a departure from the paper. With
``steps = 0`` both are the core's G step.

What the unrolled steps see: ``x`` is a fresh, raw real batch (plugins that change what D
sees through ``gancore_discriminator_batch`` are not applied to it) and ``fake`` is the G
phase's ``batch.fake`` (after those plugins). With ``train.update_order = "simultaneous"``, ``x``
is instead the step's own real batch, the one D's update reads (raw as well), as in the demo,
where D's step, the unroll and the unrolled loss share one batch. With ``plugin_terms`` (the default) L_D also
holds every other enabled plugin's ``gancore_discriminator_loss`` terms (e.g. wgan-gp's
penalty), evaluated while D carries θᵢ; they receive a ``Batch`` of phase ``"D"``.

D's parameters, buffers (cloned: a batch norm's running statistics move on the copies) and
optimizer state are never written. Any D works, however plugins wrapped it: only
``torch.func.functional_call`` over D's named parameters and buffers is used.

Nets. Metz et al.'s demo trains tanh MLPs; the core's default is ReLU. On the benchmark's ring8
(benchmarks/README.md, "Metz et al.'s tanh nets") unrolled keeps all 8 modes on every seed with
``--set train.activation=tanh``, and loses one or two on three seeds of five with ReLU. Vanilla
with tanh nets keeps all 8 as well: there the nets, not the unroll, recover the modes.

Cost. Every unrolled step is one forward and one backward of D on x and fake, recorded for
G's double backward. What does not depend on G is not differentiated: at step 0 the parameters
are constants, so G's backward runs through step 0's fake branch only (its real-data branch and
every path into θ₀ are skipped). The update rule works on the flattened parameters, one
autograd node per step with a hand-written backward. G's gradient through the unroll is exact
but once differentiable (nothing may differentiate it again).

Needs of the networks: D's logits are a function of its registered parameters and buffers
under ``torch.func.functional_call`` (no ``.data`` or ``.detach()`` on parameters, checked before
training), twice differentiable; D's optimizer is Adam, AdamW or SGD.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.func import functional_call

from gancore import GancoreError, hookimpl
from gancore.models import Critique, probing
from gancore.trainer import Batch


class Unrolled:
    """Unrolled GAN: G's step is taken against D advanced k steps by its own optimizer, differentiably (Metz et al. 2017)."""

    data_parallel = ("local", "each rank unrolls D on its own share of the batch; G's gradient through the unroll is averaged once over the ranks")

    incompatible_with = ("veegan",)  # its critic reads (F(x), x) pairs; the unrolled steps' raw real batch is not one

    def __init__(self) -> None:
        self.steps, self.backprop, self.plugin_terms, self.objective = 5, True, True, "core"
        self._step_real: tuple[int, torch.Tensor] | None = None  # (step, D's real batch) with simultaneous updates

    @hookimpl
    def gancore_add_options(self, options):
        options.add("steps", int, 5, "k, the unrolled D steps (the paper: 5 or 10; 0 is the vanilla G step)", min=0)
        options.add(
            "backprop", bool, True,
            "differentiate G's loss through the k updates (the paper's method); false: the cheaper "
            "first-order variant that treats the unrolled D as constants, a different and weaker method",
        )
        options.add(
            "objective", str, "core",
            "G's loss at the unrolled D: 'saddle' = −L_D(θₖ) on the unroll's real batch and G's samples, real term "
            "included (the paper's f_K and the official code); 'core' = train.loss's G loss on G's samples only",
            choices=("core", "saddle"),
        )
        options.add(
            "plugin_terms", bool, True,
            "unroll D with its whole loss: also the other enabled plugins' D loss terms (e.g. wgan-gp's "
            "penalty); false: the core's adversarial loss only",
        )

    @hookimpl
    def gancore_configure(self, options):
        self.steps, self.backprop, self.plugin_terms = options.steps, options.backprop, options.plugin_terms
        self.objective = options.objective

    @hookimpl
    def gancore_check_models(self, trainer, batch):
        D = trainer.models.D
        rule = update_rule(trainer.optimizers["D"], D)  # refuses optimizers it cannot unroll
        params = {name: p.detach().requires_grad_() for name, p in D.named_parameters() if name in rule.shapes}
        with probing(D), torch.enable_grad():
            logits = functional_call(D, {**dict(D.named_buffers()), **params}, (batch.real,)).logits
            grads = torch.autograd.grad(logits.sum(), list(params.values()), allow_unused=True)
        unused = [name for name, grad in zip(params, grads) if grad is None]
        if unused:
            raise GancoreError(
                f"unrolled needs D's logits to be a differentiable function of its parameters under torch.func.functional_call, "
                f"but they do not depend on {unused[0]}{f' (and {len(unused) - 1} more)' if len(unused) > 1 else ''}: read parameters as module attributes, without .data or .detach()"
            )

    @hookimpl(tryfirst=True)  # before other plugins change what D sees: the unroll reads raw points
    def gancore_discriminator_batch(self, trainer, batch):
        if batch.phase == "D" and trainer.train.update_order == "simultaneous":
            self._step_real = (batch.step, batch.real)

    @hookimpl
    def gancore_generator_critic(self, trainer, batch):
        if self.steps == 0:
            return None
        # simultaneous updates (the official demo): one real batch for D's step, the unroll and the saddle's real term
        real = self._step_real[1] if self._step_real is not None and self._step_real[0] == batch.step else None
        return unroll(trainer, batch, self.steps, backprop=self.backprop, plugin_terms=self.plugin_terms, real=real)

    @hookimpl
    def gancore_generator_loss(self, trainer, fake, critic, terms):
        if self.objective == "saddle" and isinstance(critic, UnrolledCritic):
            terms["adversarial"] = -trainer.loss.discriminator(critic(critic.real).logits, fake.logits)


# ---------------------------------------------------------------------------------------------
# The unroll
# ---------------------------------------------------------------------------------------------


class UnrolledCritic:
    """D evaluated at the unrolled parameters: ``critic(x)`` is ``D_θₖ(x)``, a Critique.

    :ivar params: D's parameters and (cloned) buffers by name, with θₖ for the trained ones.
    :ivar real: the real batch the k steps were taken on.
    """

    def __init__(self, D: nn.Module, params: dict[str, torch.Tensor], real: torch.Tensor):
        self.D, self.params, self.real = D, params, real

    def __call__(self, x: torch.Tensor) -> Critique:
        return functional_call(self.D, self.params, (x,))


def unroll(trainer, batch: Batch, steps: int, backprop: bool = True, plugin_terms: bool = True,
           real: torch.Tensor | None = None) -> UnrolledCritic:
    """Advance a functional copy of ``trainer.models.D`` ``steps`` steps by D's optimizer rule, on
    ``real`` (default: a fresh ``trainer.real_batch()``) and ``batch.fake``.

    With ``backprop`` the returned critic is differentiable w.r.t. ``batch.fake`` through the
    updates; without it the unrolled parameters are constants.
    """
    D = trainer.models.D
    rule = update_rule(trainer.optimizers["D"], D)
    fixed = {name: p.detach() for name, p in D.named_parameters() if name not in rule.shapes}
    fixed.update((name, b.clone()) for name, b in D.named_buffers())
    real = trainer.real_batch() if real is None else real
    hook = trainer.hook if plugin_terms and trainer.hook.gancore_discriminator_loss.get_hookimpls() else None
    holder = _Holder(D)

    def d_loss(theta: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """L_D at the flat parameters ``theta`` on (real, fake): D's whole loss, while D carries theta."""
        def loss() -> torch.Tensor:
            real_out, fake_out = D(real), D(fake)
            terms = {"adversarial": trainer.loss.discriminator(real_out.logits, fake_out.logits)}
            if hook is not None:
                d_batch = Batch("D", batch.step, batch.z, fake, real)
                hook.gancore_discriminator_loss(trainer=trainer, batch=d_batch, real=real_out, fake=fake_out, terms=terms)
            return sum(terms.values())

        params = {**fixed, **rule.unflatten(theta)}
        return functional_call(holder, {"D." + name: t for name, t in params.items()}, (loss,))

    theta, state = rule.theta, rule.state
    exact = backprop and batch.fake.requires_grad
    fake = batch.fake if exact else batch.fake.detach()
    for i in range(steps):
        if exact and i == 0:
            grad = _GradAtConstantParams.apply(fake, theta, d_loss)
        else:
            with torch.enable_grad():
                if not (exact and theta.requires_grad):
                    theta = theta.detach().requires_grad_()
                (grad,) = torch.autograd.grad(d_loss(theta, fake), theta, create_graph=exact)
        with torch.set_grad_enabled(exact):
            theta, state = rule.step(theta, grad, state, i)
    return UnrolledCritic(D, {**fixed, **rule.unflatten(theta if exact else theta.detach())}, real)


class _Holder(nn.Module):
    """Holds D so that ``functional_call(holder, ...)`` runs any code while D carries given parameters.

    Everything that reads ``trainer.models.D`` inside (other plugins' D loss terms included) then
    sees the unrolled parameters.
    """

    def __init__(self, D: nn.Module):
        super().__init__()
        self.D = D

    def forward(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        return fn()


class _GradAtConstantParams(torch.autograd.Function):
    """g(fake) = ∇_θ L_D(θ₀; fake) at constant θ₀, differentiable w.r.t. ``fake`` only.

    Plain autograd would make θ₀ a leaf of G's graph, and G's backward would then run the
    double backward of every branch of step 0 (real data and the parameter paths) only to
    throw those gradients away; here G's backward asks for the fake batch's gradient alone.
    (torch.func.vjp would prune the same way, but cannot run autograd.Functions without
    ``setup_context``, such as gancore.kernels' ops inside a wrapped D.)
    """

    @staticmethod
    def forward(ctx, fake, theta, d_loss):
        with torch.enable_grad():
            x = fake.detach().requires_grad_()
            theta = theta.detach().requires_grad_()
            (grad,) = torch.autograd.grad(d_loss(theta, x), theta, create_graph=True)
        ctx.x, ctx.grad = x, grad
        return grad.detach()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, grad = ctx.x, ctx.grad
        del ctx.x, ctx.grad
        if not grad.requires_grad:  # L_D does not depend on the parameters' interaction with fake
            return None, None, None
        (d_fake,) = torch.autograd.grad(grad, x, grad_out, allow_unused=True)
        return d_fake, None, None


# ---------------------------------------------------------------------------------------------
# D's optimizer, written out on the flattened parameters
# ---------------------------------------------------------------------------------------------


def update_rule(optimizer: torch.optim.Optimizer, D: nn.Module) -> "UpdateRule":
    """The update rule of ``optimizer`` (Adam, AdamW or SGD) for D's parameters, at its current state."""
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return AdamRule(optimizer, D)
    if type(optimizer) is torch.optim.SGD:
        return SGDRule(optimizer, D)
    raise GancoreError(f"unrolled implements D optimizers Adam, AdamW and SGD, not {type(optimizer).__name__}")


class UpdateRule:
    """D's trained parameters as one flat vector, the optimizer's state as flat vectors alike.

    ``step(theta, grad, state, i)`` is the i-th unrolled update. The hyperparameters are those
    of the one param group that holds D's parameters (or of several groups that agree).
    """

    state_keys: tuple[str, ...] = ()
    hyper_keys: tuple[str, ...] = ()

    def __init__(self, optimizer: torch.optim.Optimizer, D: nn.Module):
        group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        trained = [(name, p) for name, p in D.named_parameters() if p.requires_grad and id(p) in group_of]
        if not trained:
            raise GancoreError("unrolled: none of D's parameters is trained by D's optimizer")
        self.shapes = {name: p.shape for name, p in trained}
        self.sizes = [p.numel() for _, p in trained]
        settings = {tuple((key, _number(group.get(key, 0))) for key in self.hyper_keys) for group in (group_of[id(p)] for _, p in trained)}
        if len(settings) > 1:
            raise GancoreError(f"unrolled: D's parameters are in param groups with different {', '.join(self.hyper_keys)}; the unroll needs one setting")
        self.hyper = dict(settings.pop())
        self.group = group_of[id(trained[0][1])]
        states = [optimizer.state.get(p, {}) for _, p in trained]
        steps = {float(s.get("step", 0)) for s in states}
        if len(steps) > 1:
            raise GancoreError("unrolled: D's parameters have different optimizer step counts; the unroll needs one")
        self.step0 = steps.pop()
        with torch.no_grad():
            self.theta = torch.cat([p.detach().reshape(-1) for _, p in trained])
            self.fresh = [s.get(key) is None for s in states for key in self.state_keys]
            self.state = tuple(self._flat(states, key) for key in self.state_keys)

    def _flat(self, states: list[dict], key: str) -> torch.Tensor:
        theta = self.theta
        parts = [torch.zeros(n, dtype=theta.dtype, device=theta.device) if s.get(key) is None else s[key].detach().reshape(-1) for s, n in zip(states, self.sizes)]
        return torch.cat(parts).to(theta.dtype)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: t.view(shape) for (name, shape), t in zip(self.shapes.items(), theta.split(self.sizes))}

    def step(self, theta, grad, state, i):
        raise NotImplementedError


def _number(value):
    """A hyperparameter as plain numbers (lr may be a 0-d tensor, betas a tuple)."""
    return tuple(map(float, value)) if isinstance(value, (tuple, list)) else float(value)


class AdamRule(UpdateRule):
    """torch.optim.Adam and AdamW (``decoupled_weight_decay``), with ``maximize``; not amsgrad."""

    state_keys = ("exp_avg", "exp_avg_sq")
    hyper_keys = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay")

    def __init__(self, optimizer, D):
        super().__init__(optimizer, D)
        # AdamW is an Adam with decoupled_weight_decay=True (torch < 2.6: a class of its own)
        self.hyper["decoupled_weight_decay"] = self.hyper["decoupled_weight_decay"] or isinstance(optimizer, torch.optim.AdamW)
        if self.hyper["amsgrad"]:
            raise GancoreError("unrolled: D's Adam uses amsgrad, which the unroll does not implement; set amsgrad=False")

    def step(self, theta, grad, state, i):
        h = self.hyper
        beta1, beta2 = h["betas"]
        t = self.step0 + i + 1
        hp = SimpleNamespace(
            lr=h["lr"], beta1=beta1, beta2=beta2, eps=h["eps"], weight_decay=h["weight_decay"],
            step_size=h["lr"] / (1 - beta1**t), bc2_sqrt=(1 - beta2**t) ** 0.5,
            maximize=bool(h["maximize"]), decoupled=bool(h["decoupled_weight_decay"]),
        )
        theta, exp_avg, exp_avg_sq = _AdamStep.apply(theta, grad, *state, hp)
        return theta, (exp_avg, exp_avg_sq)


class _AdamStep(torch.autograd.Function):
    """One Adam step on flat tensors, op for op as torch.optim.Adam, with its backward written out.

    ``g = ±grad (+ wd·θ)``, ``m = lerp(m, g, 1−β₁)``, ``v = β₂v + (1−β₂)g²``,
    ``θ' = θ·(1 − lr·wd if decoupled) − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + eps)``.
    The hand-written backward takes about half the elementwise passes of autograd's. √v has an
    infinite derivative at v = 0 (a parameter whose gradients were all exactly zero, e.g. of a
    dead ReLU unit); there it is taken as 0, the subgradient of √((1−β₂)g²) = √(1−β₂)|g| at
    g = 0, so that such parameters do not turn G's gradient into NaN.
    """

    @staticmethod
    def forward(ctx, theta, grad, exp_avg, exp_avg_sq, h):
        g = grad.neg() if h.maximize else grad
        decay = h.weight_decay != 0
        if decay and not h.decoupled:
            g = g.add(theta, alpha=h.weight_decay)
        m = torch.lerp(exp_avg, g, 1 - h.beta1)
        v = torch.addcmul(exp_avg_sq * h.beta2, g, g, value=1 - h.beta2)
        s = v.sqrt()
        den = (s / h.bc2_sqrt).add_(h.eps)
        base = theta * (1 - h.lr * h.weight_decay) if decay and h.decoupled else theta
        ctx.save_for_backward(g, m, s, den)
        ctx.h = h
        return torch.addcdiv(base, m, den, value=-h.step_size), m, v

    @staticmethod
    @once_differentiable
    def backward(ctx, d_theta, d_m, d_v):
        g, m, s, den = ctx.saved_tensors
        h = ctx.h
        # θ' = base − a·m/den,  den = s/c + eps,  s = √v
        d_m = torch.div(d_theta, den).mul_(-h.step_size) if d_m is None else torch.addcdiv(d_m, d_theta, den, value=-h.step_size)
        dv_dtheta = torch.where(s > 0, m / (den * den * s) * (0.5 * h.step_size / h.bc2_sqrt), 0)
        d_v = d_theta * dv_dtheta if d_v is None else torch.addcmul(d_v, d_theta, dv_dtheta)
        d_g = torch.addcmul(d_m * (1 - h.beta1), g, d_v, value=2 * (1 - h.beta2))
        d_prev = d_theta
        if h.weight_decay != 0:
            d_prev = d_theta * (1 - h.lr * h.weight_decay) if h.decoupled else d_theta.add(d_g, alpha=h.weight_decay)
        d_exp_avg = d_m.mul_(h.beta1) if ctx.needs_input_grad[2] else None
        d_exp_avg_sq = d_v.mul_(h.beta2) if ctx.needs_input_grad[3] else None
        return d_prev, (d_g.neg() if h.maximize else d_g), d_exp_avg, d_exp_avg_sq, None


class SGDRule(UpdateRule):
    """torch.optim.SGD with momentum, dampening, Nesterov, weight decay and ``maximize``."""

    state_keys = ("momentum_buffer",)
    hyper_keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")

    def __init__(self, optimizer, D):
        super().__init__(optimizer, D)
        if self.hyper["momentum"] != 0 and any(self.fresh) and not all(self.fresh):
            raise GancoreError("unrolled: only some of D's parameters have SGD momentum buffers; the unroll needs all or none")

    def step(self, theta, grad, state, i):
        h = self.hyper
        g = grad.neg() if h["maximize"] else grad
        if h["weight_decay"] != 0:
            g = g.add(theta, alpha=h["weight_decay"])
        (buf,) = state
        if h["momentum"] != 0:
            # torch starts a missing buffer with the gradient itself, without dampening
            buf = g if i == 0 and self.fresh[0] else torch.add(buf * h["momentum"], g, alpha=1 - h["dampening"])
            g = g.add(buf, alpha=h["momentum"]) if h["nesterov"] else buf
        return theta.add(g, alpha=-h["lr"]), (buf,)
