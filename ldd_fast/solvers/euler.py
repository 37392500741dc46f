"""Euler / DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12).

DDIM is Euler's method on the scaled state x~ = x / alpha in the noise level
sigma~ = sigma / alpha, where the PF-ODE reads dx~/dsigma~ = (x~ - D) / sigma~
(Karras et al. 2022, sec. 4). For EDM (alpha = 1) it is Euler in sigma, and it
equals first-order DPM-Solver++. In x:
    x_next = (sigma_next / sigma_cur) x + (alpha_next - alpha_cur sigma_next / sigma_cur) D.
"""
from __future__ import annotations

from ..plan import PlanBuilder, StepTimes


def plan(noise, t, t_eval, *, order: int = 1, final: str = "t_min", corrections=None,
         coefficient_form: str = "exact"):
    st = StepTimes(noise, t, final)
    b = PlanBuilder(t, t_eval, "euler", order, {"final": final}, corrections, coefficient_form)
    for i in range(st.n):
        d = b.call("x")
        if st.lands_on_zero(i):
            b.update(x=d)
            continue
        ratio = st.sigma[i + 1] / st.sigma[i]
        w = st.alpha[i + 1] - ratio * st.alpha[i]
        b.update(x=ratio * b.reg("x") + w * d + b.correct(w, [d]))  # one output: a correction only when relaxed
    return b.build()
