"""Every numerical tolerance of the test suite, with its reason."""

TOL = {
    # Two float64 evaluations of the same algebra in a different operation order:
    # a few ulps times the number of chained steps and the size of the state.
    "fp64_same_math": 1e-10,
    # float32 execution vs the float64 reference for O(1) states over <= 10 steps:
    # each step rounds at ~6e-8 relative; the denoiser and combinations add a few.
    "fp32_vs_fp64": 2e-5,
    # Measured order of convergence vs theory: least-squares slope over a 8x range of
    # nfe still carries pre-asymptotic curvature of order 0.1-0.2.
    "order": 0.3,
    # gradcheck in float64 with central differences (eps 1e-6): truncation ~eps^2 times
    # third derivatives, roundoff ~1e-16 / eps; both below 1e-6 for O(1) outputs.
    "gradcheck_atol": 1e-6,
    "gradcheck_rtol": 1e-4,
    # Our float32 sampler vs diffusers' float32 set_timesteps/step loop on the same UNet,
    # relative to max |x|: diffusers rounds its step coefficients in float32, we compute them
    # in float64 and cast once. Measured <= 4.3e-7, the float32-vs-float64 floor of our own
    # sampler (3.3e-7); 30x below the smallest convention mismatch tried (final time one
    # training step later: 6e-5 relative).
    "fp32_vs_diffusers": 2e-6,
    # One guided evaluation a x + w b eps_c + (1 - w) b eps_u in float32, relative to the sum of
    # the magnitudes of those (cancelling) terms: a few unit roundoffs (6e-8). Measured 1.9e-7.
    "fp32_guided_sum": 1e-6,
}
