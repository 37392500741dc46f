"""DPM-Solver++ multistep, data prediction (Lu et al. 2022, "DPM-Solver++", Algorithm 2).

With h = lambda_next - lambda_cur and the exact solution
    x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda x0(lambda) dlambda,
the 2M step uses D0 + D1 / 2 with D1 = (m0 - m1) / r0 (diffusers' "midpoint" form).

Order 3 (3M) is the update of DPM-Solver's and diffusers' code. Expanding x0 in
lambda, the x0'' term of the exact solution is alpha_t (h^2/2 - h + 1 - e^-h) x0''
while their D2 estimates (h^2 / 2) x0'' and is weighted by alpha_t (1/2 - phi_3):
half the Taylor-consistent weight, so the local error stays O(h^3) and the
method is second order. `variant="diffusers"` (default) keeps that update for
compatibility; `variant="taylor"` doubles the D2 weight and is third order
(tests/test_convergence.py measures both).

Learned corrections (PlanBuilder.correct) act on the buffered data predictions: m1..m_{p-1}, or in the
generalized form every earlier D (the history then holds all of them until the last step).
"""
from __future__ import annotations

import torch

from ..plan import PlanBuilder, StepTimes, history_keep, shift_history, step_orders

VARIANTS = ("diffusers", "taylor")


def plan(noise, t, t_eval, *, order: int = 2, lower_order_final: bool = True, final: str = "t_min",
         variant: str = "diffusers", corrections=None, coefficient_form: str = "exact"):
    st = StepTimes(noise, t, final)
    b = PlanBuilder(t, t_eval, "dpmpp", order,
                    {"lower_order_final": lower_order_final, "final": final, "variant": variant}, corrections,
                    coefficient_form)
    orders = step_orders(st.n, order, lower_order_final, first=st.first_history)
    d2_weight = 2.0 if variant == "taylor" else 1.0
    lam = st.lam
    for i in range(st.n):
        m0 = b.call("x")
        keep = history_keep(b, i, st.n, orders[i + 1] - 1 if i + 1 < st.n else 0, st.first_history)
        history = shift_history(b, m0, keep)
        if st.lands_on_zero(i):
            b.update(x=m0)
            continue
        p = orders[i]
        alpha_t, h = st.alpha[i + 1], lam[i + 1] - lam[i]
        phi_1 = torch.expm1(-h)
        x_next = (st.sigma[i + 1] / st.sigma[i]) * b.reg("x") - (alpha_t * phi_1) * m0
        if p == 2:
            r0 = (lam[i] - lam[i - 1]) / h
            d1 = (m0 - b.reg("m1")) / r0
            x_next = x_next - (0.5 * alpha_t * phi_1) * d1
        elif p == 3:
            m1, m2 = b.reg("m1"), b.reg("m2")
            r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
            d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_2 = phi_1 / h + 1.0
            phi_3 = phi_2 / h - 0.5
            x_next = x_next + (alpha_t * phi_2) * d1 - (d2_weight * alpha_t * phi_3) * d2
        outputs = b.buffered(m0, p)
        x_next = x_next + b.correct(st.d_weight(i), outputs, b.positions(lam, i, len(outputs)), h)
        b.update(x=x_next, **history)
    return b.build()
