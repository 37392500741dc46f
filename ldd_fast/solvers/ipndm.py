"""iPNDM (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator", sec. 4):
Adams-Bashforth with fixed weights on the noise prediction eps = (y - D) / level,
integrating dy/dlevel = eps in the schedule's ODE coordinates (y = x / alpha, level = sigma / alpha
for EDM and VP; y = x, level = t for rectified flow, where eps is the velocity), with a
lower-order warm-up (orders 1, 2, 3 on the first steps).
"""
from __future__ import annotations

from ..plan import PlanBuilder, StepTimes, history_keep, lin_sum, shift_history, step_orders

AB_WEIGHTS = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def plan(noise, t, t_eval, *, order: int = 4, lower_order_final: bool = True, final: str = "t_min",
         corrections=None, coefficient_form: str = "exact"):
    st = StepTimes(noise, t, final)
    b = PlanBuilder(t, t_eval, "ipndm", order, {"lower_order_final": lower_order_final, "final": final},
                    corrections, coefficient_form)
    orders = step_orders(st.n, order, lower_order_final)
    for i in range(st.n):
        d = b.call("x")
        if st.lands_on_zero(i):
            b.update(x=d)
            continue
        s_cur, s_next = st.level[i], st.level[i + 1]
        x_cur = b.reg("x") / st.scale[i]
        eps = (x_cur - d) / s_cur
        keep = history_keep(b, i, st.n, orders[i + 1] - 1 if i + 1 < st.n else 0)
        eps_all = b.buffered(eps, orders[i], prefix="e")  # generalized: every earlier eps, not only the AB ones
        history = shift_history(b, eps, keep, prefix="e")
        slope = lin_sum(w * e for w, e in zip(AB_WEIGHTS[orders[i]], eps_all))
        # Learned weights act on the buffered eps (constant along the exact path of a constant denoiser).
        x_next = st.scale[i + 1] * (x_cur + (s_next - s_cur) * slope)
        at = b.positions(st.level, i, len(eps_all))
        b.update(x=x_next + b.correct(st.scale[i + 1] * (s_next - s_cur), eps_all, at, s_next - s_cur), **history)
    return b.build()
