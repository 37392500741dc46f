"""UniPC multistep, data prediction (Zhao et al. 2023, "UniPC", Algorithms 1-3 with B(h) variants).

Step i: the network output m_i = D(x_i, t_i) first corrects the previous
prediction (UniC, order p_{i-1}, no extra call), then the predictor (UniP, order
p_i) steps from the corrected state to t_{i+1}. There is no corrector after the
last step: it would need a call whose output is never used.

For h = lambda_t - lambda_s0 and r_k = (lambda_{s_k} - lambda_s0) / h, the rho
coefficients solve R rho = b with R_jk = r_k^j and
b_j = (j+1)! h phi_{j+1}(h) / B(h), B(h) = h (bh1) or e^h - 1 (bh2) (paper eq. 8,
with the sign conventions of the data-prediction form, hh = -h). As in the
authors' and diffusers' code, UniP-2 uses rho = 1/2 and UniC-1 uses rho = 1/2.
Everything is built with torch.stack / torch.linalg.solve so that gradients
reach every time step (the LD3 authors' torch.tensor([...]) cut them).

Learned corrections (PlanBuilder.correct) act on both updates: the corrector's on m_i and the p_{i-1}
outputs it uses, the predictor's on m_i and its p_i - 1; in the generalized form both on every earlier
output (the history m1, m2, ... then holds all of them until the last step).
"""
from __future__ import annotations

import torch

from ..plan import Lin, PlanBuilder, StepTimes, history_keep, lin_sum, step_orders

VARIANTS = ("bh1", "bh2")


def _phi_terms(h, order: int, variant: str):
    hh = -h
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    factorial, b = 1, []
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return h_phi_1, b_h, torch.stack(b)


def _update(st: StepTimes, s: int, x: Lin, m0: Lin, past: list[Lin], variant: str, m_t: Lin | None):
    """One UniP (m_t is None) or UniC (m_t = the new output at t_{s+1}) update from t_s to t_{s+1}.

    past[k - 1] is the output at t_{s-k}; the order is len(past) + 1.
    """
    order = len(past) + 1
    lam = st.lam
    h = lam[s + 1] - lam[s]
    alpha_t = st.alpha[s + 1]
    rks = [(lam[s - k] - lam[s]) / h for k in range(1, order)]
    d1s = [(m - m0) / r for m, r in zip(past, rks)]
    h_phi_1, b_h, b = _phi_terms(h, order, variant)
    x_t = (st.sigma[s + 1] / st.sigma[s]) * x - (alpha_t * h_phi_1) * m0
    r = torch.stack(rks + [torch.ones_like(h)])
    big_r = torch.stack([r**j for j in range(order)])
    if m_t is None:  # predictor
        if order == 1:
            return x_t
        rhos = [0.5] if order == 2 else list(torch.linalg.solve(big_r[:-1, :-1], b[:-1]))
        return x_t - (alpha_t * b_h) * lin_sum(rho * d for rho, d in zip(rhos, d1s))
    rhos = [torch.full_like(h, 0.5)] if order == 1 else list(torch.linalg.solve(big_r, b))
    res = lin_sum(rho * d for rho, d in zip(rhos[:-1], d1s)) + rhos[-1] * (m_t - m0)
    return x_t - (alpha_t * b_h) * res


def plan(noise, t, t_eval, *, order: int = 3, lower_order_final: bool = True, final: str = "t_min",
         variant: str = "bh2", corrections=None, coefficient_form: str = "exact"):
    st = StepTimes(noise, t, final)
    b = PlanBuilder(t, t_eval, "unipc", order,
                    {"lower_order_final": lower_order_final, "final": final, "variant": variant}, corrections,
                    coefficient_form)
    orders = step_orders(st.n, order, lower_order_final, first=st.first_history)
    for i in range(st.n):
        m_i = b.call("x")
        if i <= st.first_history:  # nothing to correct; from pure noise, no UniC across h = inf either
            x_c = b.reg("x")
        else:  # UniC: correct x_i with the new output, at the previous step's order.
            p = orders[i - 1]
            past = [b.reg(f"m{k}") for k in range(2, p + 1)]
            x_c = _update(st, i - 1, b.reg("xc"), b.reg("m1"), past, variant, m_t=m_i)
            outputs = b.buffered(m_i, p + 1)
            x_c = x_c + b.correct(st.d_weight(i - 1), outputs, b.positions(st.lam, i, len(outputs)),
                                  st.lam[i] - st.lam[i - 1])
        if st.lands_on_zero(i):
            b.update(x=m_i)
            continue
        # UniP: predict x_{i+1} from the corrected state.
        p = orders[i]
        past = [b.reg(f"m{k}") for k in range(1, p)]
        outputs = b.buffered(m_i, p)
        x_next = _update(st, i, x_c, m_i, past, variant, m_t=None) + b.correct(
            st.d_weight(i), outputs, b.positions(st.lam, i, len(outputs)), st.lam[i + 1] - st.lam[i])
        if i == st.n - 1:
            b.update(x=x_next)
            continue
        # The corrector of step i + 1 needs p outputs (this one and p - 1 earlier); generalized: all so far.
        keep = history_keep(b, i, st.n, p, st.first_history)
        hist = [m_i] + [b.reg(f"m{k}") for k in range(1, keep)]
        if i < st.first_history:  # the output at t = 1 is not history, and there is no corrector to feed
            b.update(x=x_next)
            continue
        b.update(x=x_next, xc=x_c, **{f"m{k + 1}": m for k, m in enumerate(hist)})
    return b.build()
