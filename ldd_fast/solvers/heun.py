"""Heun's method, deterministic: EDM Algorithm 2 (Karras et al. 2022) with S_churn = 0.

Run on y = x / scale in level, the schedule's ODE coordinates (NoiseSchedule.ode_coordinates):
x~ = x / alpha in sigma~ = sigma / alpha for EDM and VP (for EDM, alpha = 1 and this is
Algorithm 2 line for line), and x in t for rectified flow, where (x - D) / t is the velocity and
the method is diffusers' FlowMatchHeunDiscreteScheduler. K steps cost 2K - 1 network calls: the last step is
a plain Euler step (Algorithm 2 skips the correction when sigma_next = 0; we
decide it at plan time for every final time, so the call count is always odd).
Network calls in order: step start t_0, stage end t_1, step start t_1, ..., t_{K-1}.
"""
from __future__ import annotations

from ..plan import PlanBuilder, StepTimes


def plan(noise, t, t_eval, *, order: int = 2, final: str = "t_min", corrections=None,
         coefficient_form: str = "exact"):
    st = StepTimes(noise, t, final)
    b = PlanBuilder(t, t_eval, "heun", order, {"final": final}, corrections, coefficient_form)
    for i in range(st.n):
        d_cur = b.call("x")
        if st.lands_on_zero(i):
            b.update(x=d_cur)
            continue
        s_cur, s_next = st.level[i], st.level[i + 1]
        a_cur, a_next = st.scale[i], st.scale[i + 1]
        x_cur = b.reg("x") / a_cur
        # Euler step (one slope: a learned correction only when relaxed).
        x_next = x_cur + (s_next - s_cur) * (x_cur - d_cur) / s_cur + b.correct(s_next - s_cur, [(x_cur - d_cur) / s_cur])
        if i == st.n - 1:
            b.update(x=a_next * x_next)
            continue
        b.update(x=b.reg("x"), m1=d_cur, xs=a_next * x_next)
        # Apply 2nd order correction.
        d_stage = b.call("xs")
        x_cur, d_cur = b.reg("x") / a_cur, b.reg("m1")
        d_prime = (x_cur - d_cur) / s_cur
        x_next = x_cur + (s_next - s_cur) * d_prime
        d_prime_stage = (x_next - d_stage) / s_next
        # Learned weights move the 1/2 : 1/2 split between the two slopes (constant for a constant denoiser).
        x_new = x_cur + (s_next - s_cur) * (0.5 * d_prime + 0.5 * d_prime_stage)
        b.update(x=a_next * (x_new + b.correct(s_next - s_cur, [d_prime_stage, d_prime])))
    return b.build()
